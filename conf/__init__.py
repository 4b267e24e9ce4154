# The YAML config groups. This folder ships inside the package as `nettrain.conf`.
