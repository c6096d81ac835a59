"""Reading a source: everything that opens a checkpoint, an archive or a Keras weight file.

``open.open_source`` says what ``--src`` means and hands back a reader (``api.CheckpointReader``):
``native`` (TF's V1/V2 bundles with numpy alone: ``sources``, ``sstable``), ``tf`` (TensorFlow's
own reader, a cross-check), ``keras_h5`` (keras.applications weights, h5py alone; ``h5safety``
keeps HDF5 files to themselves) and ``archives`` (release tarballs, unpacked under limits).
Nothing here imports torch.
"""
