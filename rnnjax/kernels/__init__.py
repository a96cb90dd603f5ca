"""Native kernels that rnnjax can call through ``jax.ffi`` (optional; built on demand).

``rnnjax.kernels.onednn``: oneDNN's fused LSTM, GRU and vanilla RNN primitives on the
CPU (``pip install 'rnnjax[onednn]'``), compiled with the machine's C++ compiler the
first time they are needed.
"""
