"""dicnet_training: teacher training, student distillation, calibration, evaluation and export.

Installed under the import name ``dicnet_training`` (setup.py package_dir) so that the folder keeps the
product's name without putting a generic ``training`` module on sys.path.
"""
