"""The model family: one decoder-only transformer (``DecoderLM``), GPT-2 or Llama by configuration.

Read in this order: ``decoder`` (the model and its block), ``attention`` (projections, GQA, KV cache and the
kernels), ``positional`` (learned or rotary), ``norms``, ``mlp``, ``initialization``; then ``flops`` (counts,
FLOPs, GPU peaks). Each component's pydantic config sits beside its class; the registry tables at the bottom
of each module are what ``llm_gym/assembly.py`` registers. Sampling and export to transformers live in
``llm_gym.inference``.
"""
