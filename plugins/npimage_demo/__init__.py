"""The demo catalogue generator: drawn packshots with planted duplicates and a truth file.

Kept outside the runtime library: it needs scikit-image, which the job itself does not.
"""
