"""The hand-placed kernels the models run on: gemm (linear layers and products on the host's kernel plan, MKL or
oneDNN, chosen by kernels.linear), attention (torch's fused attention or the written-out products, chosen by
kernels.attention) and dropout (a mask of random bytes)."""
