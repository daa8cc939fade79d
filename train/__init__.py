"""Training stage: the two LeNets in Paddle, the blog's recipe, seeded and reproducible."""

import os
import warnings

# Paddle logs glog warnings and a ccache UserWarning on import; neither concerns the user.
os.environ.setdefault("GLOG_minloglevel", "2")
warnings.filterwarnings("ignore", message="No ccache found")
