"""TF-Slim's VGG-16 and VGG-19: two architectures, one definition."""
