"""Training helpers around ESPnet's Trainer."""
