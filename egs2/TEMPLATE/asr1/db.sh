# shellcheck shell=bash
# Where the corpora are (sourced by run.sh). Set the variables here or in the environment.

# CSJ: the folder holding MORPH/ and WAV/ (usb), dvd3..dvd17 (dvd) or CSJ2004/ (merl).
CSJDATATOP=${CSJDATATOP:-}
CSJVER=${CSJVER:-usb}

# LibriSpeech: the folder holding LibriSpeech/<part>/ (downloaded there on request).
LIBRISPEECH=${LIBRISPEECH:-downloads}
