"""What the transfer backends built on mmengine (OpenMMLab's mmseg and mmdet) share: their
config handling (config.py), the hooks and transforms this project registers (hooks.py), and the
steps of a run with mmengine's Runner (backend.py). Imports nothing at package import: mmengine
is imported when a config of such a backend runs."""
