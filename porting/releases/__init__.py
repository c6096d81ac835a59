"""The published TF-Slim releases: the registry shipped with the package (``registry``: names,
URLs, archive members, pinned digests, ``releases.lock``) and downloading them (``download``).
"""
