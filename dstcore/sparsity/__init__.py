"""Activation maps, activation regularisers and weight pruning."""
