"""Recognition with a trained dual-mode model: offline (every head) and streaming."""
