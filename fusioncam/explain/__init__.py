"""Explanations: Grad-CAM maps and the pictures drawn from them."""
