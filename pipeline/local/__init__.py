"""Local stand-ins for the cloud: the embedded AWS endpoint and QEMU runners."""
