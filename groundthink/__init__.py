"""GroundThink: small hybrid language models with RWKV-6 and Mamba-2 in parallel in every block."""
__version__ = "0.1.0"
