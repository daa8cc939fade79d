"""The on-device layer: numpy plus one inference runtime, nothing from the host stages."""
