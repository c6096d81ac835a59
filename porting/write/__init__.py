"""Writing a port's outputs: the state dict as a hashed ``.pth`` (``pth``: torch.save's format
without torch) or ``.safetensors`` (``hashed``, which also holds the rule of every file named
after its contents), the typed manifest beside it (``manifest``: one writer, one reader) and
the model card made from it (``card``), all staged in one ``porting.files.Outputs``
transaction. Nothing here imports torch.
"""
