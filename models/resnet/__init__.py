"""TF-Slim's ResNet v1 and v2 at depths 50, 101 and 152: six architectures, one definition."""
