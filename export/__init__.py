"""Export stage: Paddle checkpoint -> ONNX with the raw-pixel contract, parity-checked."""

import os
import warnings

os.environ.setdefault("GLOG_minloglevel", "2")
# paddle2onnx's polygraphy optimizer pip-installs packages at run time; we never call it, and
# this makes sure nothing it imports could.
os.environ["POLYGRAPHY_AUTOINSTALL_DEPS"] = "0"
warnings.filterwarnings("ignore", message="No ccache found")
