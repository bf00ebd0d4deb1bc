"""A solution of notebooks/exercises/sampling.py: `python notebooks/grade.py sampling --solution` grades it."""
import torch

from minivar.sampling import KVCache, guided_logits, sample_tokens


@torch.no_grad()
def generate(self, quantizer, labels_B, cfg_scale=1.5, temperature=1.0, top_k=0, top_p=1.0, generator=None,
             keep=None):
    """Algorithm 2: one forward pass per scale on that scale's tokens, the KV cache holding the coarser ones."""
    B, side = len(labels_B), self.cfg.scales[-1]
    cond_2BD = self.class_emb(torch.cat([labels_B, torch.full_like(labels_B, self.cfg.num_classes)]))  # [class; null]
    caches = [KVCache(self.seq_len) for _ in self.blocks]  # one per block
    f_hat = cond_2BD.new_zeros(B, self.cfg.latent_dim, side, side)  # the image so far: nothing yet
    x_2BlD = cond_2BD[:, None]  # the first scale's only input: the class token
    maps, start = [], 0
    for k, s in enumerate(self.cfg.scales):
        end = start + s * s  # this scale's positions in the sequence
        h = x_2BlD + self.pos_emb[:, start:end] + self.level_emb.weight[k]  # 1.
        for block, cache in zip(self.blocks, caches):  # 2.
            h = block(h, cond_2BD, cache=cache)
        logits_BlV = guided_logits(self.head(h, cond_2BD), self.guidance_weight(k, cfg_scale))  # 3.
        r_Bl = sample_tokens(logits_BlV, temperature, top_k, top_p, generator)  # 4. all s² tokens at once
        if keep is not None:  # 5. editing: the source's token wherever the mask keeps it
            r_Bl = torch.where(keep[1][:, start:end], keep[0][:, start:end], r_Bl)
        maps.append(r_Bl.view(B, s, s))  # 6.
        f_hat, next_BCss = quantizer.add_scale(f_hat, maps[-1], k)
        if next_BCss is not None:
            x_BlD = self.input_proj(next_BCss.flatten(2).transpose(1, 2))
            x_2BlD = torch.cat([x_BlD, x_BlD])  # both halves of the CFG batch see the same image so far
        start = end
    return maps
