"""Training and evaluation data: Harvard pairs, slices of co-registered volumes, augmentation."""
