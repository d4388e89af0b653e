"""The old name of ``qkv_grading.assertions`` (the checks that exercises' test cells use), kept importable
for one release: a learner's notebook downloaded before the rename says ``from qkv_grading.checks import
...``. Remove it in the release after next; ``qkv_grading.check`` is the ``qkv check`` command."""

from qkv_grading.assertions import *  # noqa: F401,F403
from qkv_grading.assertions import __all__  # noqa: F401
