"""Image-level operations on arrays and SimpleITK images: intensity normalisation, CT windows, colour, phantoms."""
