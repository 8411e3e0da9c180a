"""An app whose import kills the process, as a broken C extension does."""

import os

os.abort()
