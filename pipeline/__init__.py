"""Build Erlang apps into unikernel images, publish them as AMIs and roll them out blue/green on EC2."""

__version__ = "0.1.0"
