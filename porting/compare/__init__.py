"""``port-weights compare``: how far a foreign PyTorch weight file (timm, torchvision, Cadene's
pretrainedmodels, the converter zoo's pickled ``.npy``) is from the TF checkpoint's weights:
per tensor, and per end point, run in our exact network and in the file's own."""
