"""Model layer: the network (embedding, stacked recurrent cells, head) and its fused one-step sampler."""
