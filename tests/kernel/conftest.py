"""Fixtures shared by the kernel test modules."""

from tests.kernel.test_image_kernel import world

#: the image tests' state directory and images: also the writable-layer tests' (pytest
#: finds a fixture by its name in a conftest)
__all__ = ["world"]
