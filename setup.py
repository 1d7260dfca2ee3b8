"""Builds the two native modules of the wheel: `_core` (Cython) and `_native` (Rust/PyO3)."""

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools_rust import Binding, RustExtension

setup(
    ext_modules=cythonize(
        [Extension("ambient_fast._core", ["ambient_fast/_core.pyx"], extra_compile_args=["-O2"])],
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False},
    ),
    rust_extensions=[
        RustExtension(
            "ambient_fast._native",
            path="native/Cargo.toml",
            binding=Binding.PyO3,
            py_limited_api=False,
        )
    ],
    zip_safe=False,
)
