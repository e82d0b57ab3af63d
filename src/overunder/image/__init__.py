"""Images: manifests, configs, references and the image store."""
