"""SCTP association state saved and restored through the kernel repair mode."""
