"""Writing a port's outputs: the state dict as a hashed ``.pth`` (``pth``: torch.save's format
without torch) or ``.safetensors`` (``hashed``), and the manifest and model card beside it
(``manifest``), all staged in one ``porting.files.Outputs`` transaction. Nothing here imports
torch.
"""
