"""espnet2-dualmode: joint streaming / full-context ASR as an ESPnet2 plugin."""

from setuptools import find_packages, setup

# The stack that installs together on Python 3.11 (see README "Install"): espnet 202511
# is the newest release for 3.11 and needs torch < 2.12 (setuptools < 74).
install_requires = [
    "torch==2.11.0",
    "torchaudio==2.11.0",
    "espnet==202511",
    "sentencepiece",
    "kaldiio",
    "pyyaml",
    "tqdm",
    "matplotlib",
    "numpy",
    "soundfile",
    "tensorboard",
    "pyopenjtalk-plus",
    "aiohttp>=3.9",  # the server (espnet2_dualmode.bin.serve); web.AppKey needs 3.9
    # ESPnet imports g2p_en, hence inflect, in every process; 7.2+ wraps its functions with
    # typeguard at import time, 2.5-3.9 s against 0.3-0.5 s for 7.0 here (jaraco/inflect#212)
    "inflect<7.2",
]

setup(
    name="espnet2-dualmode",
    version="0.1.0",
    description="One ESPnet2 ASR model for streaming and full-context recognition "
    "(contextual-block Conformer cascade, multi-decoder, similarity-preserving KD)",
    # The model plugin and the recipe toolkit (which the plugin never imports).
    packages=find_packages(include=["espnet2_dualmode", "espnet2_dualmode.*",
                                    "dualmode_recipe", "dualmode_recipe.*"]),
    python_requires=">=3.11,<3.12",
    install_requires=install_requires,
    package_data={"espnet2_dualmode.serving": ["static/*"]},  # the browser page
    extras_require={
        # selenium drives Debian's chromium + chromium-driver in tests/test_serve_browser.py
        "test": ["pytest", "pytest-xdist", "selenium>=4.11"],
        # warp-rnnt builds only where a CUDA GPU is visible at install time.
        "cuda": ["warp-rnnt==0.7.0"],
    },
)
