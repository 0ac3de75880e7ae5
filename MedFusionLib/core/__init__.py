"""The foundation every other part builds on: errors, devices, precision, memory checks, image geometry.

Imports nothing from the rest of MedFusionLib."""
