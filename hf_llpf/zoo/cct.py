"""CCT-7/3x1, the Compact Convolutional Transformer (Hassani et al., 2021) the paper connects on CIFAR-10.

A convolutional tokenizer (one 3x3 conv + ReLU + 3x3 stride-2 max-pool: a 32 px image becomes 16x16 = 256
tokens), a learnable positional embedding, 7 pre-norm transformer blocks (embed 256, 4 heads, MLP ratio 2,
no qkv bias) and *sequence pooling* (an attention-weighted mean of the tokens instead of a class token),
then a linear classifier. The blocks are timm's ``vision_transformer.Block``; timm has no CCT.
"""

from __future__ import annotations

import torch
from timm.layers import trunc_normal_
from timm.models import register_model
from timm.models.vision_transformer import Block
from torch import nn

from hf_llpf.errors import DataMismatchError
from hf_llpf.zoo.small import _build


class ConvTokenizer(nn.Module):
    """``n_conv`` x (conv kxk stride 1 + ReLU + max-pool 3x3 stride 2): image → tokens ``B, N, D``."""

    def __init__(self, in_chans: int, embed_dim: int, kernel_size: int = 3, n_conv: int = 1):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_chans
        for i in range(n_conv):
            # CCT's tokenizer: inner convs have 64 channels, the last one the embedding width; no bias.
            c_out = embed_dim if i == n_conv - 1 else 64
            layers += [
                nn.Conv2d(c_in, c_out, kernel_size, padding=kernel_size // 2, bias=False),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, stride=2, padding=1),
            ]
            c_in = c_out
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x).flatten(2).transpose(1, 2)  # B, D, H', W' → B, H'W', D


class CCT(nn.Module):
    """Compact Convolutional Transformer.

    Args:
        num_classes: classifier outputs.
        in_chans: input channels.
        img_size: input side in pixels (fixes the number of tokens of the positional embedding).
        embed_dim: token width (256 for CCT-7; smaller for CPU tests).
        depth: number of transformer blocks (7 for CCT-7).
        num_heads: attention heads (4 for CCT-7).
        mlp_ratio: MLP hidden width / embed_dim (2 for CCT-7).
        kernel_size, n_conv: the tokenizer's conv kernel and number of convs (3 and 1 for "3x1").
        drop_rate, attn_drop_rate, drop_path_rate: dropout after the embedding, attention dropout and
            stochastic depth (CCT's CIFAR settings: 0, 0.1, 0.1).
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 3,
        img_size: int = 32,
        embed_dim: int = 256,
        depth: int = 7,
        num_heads: int = 4,
        mlp_ratio: float = 2.0,
        kernel_size: int = 3,
        n_conv: int = 1,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.1,
        drop_path_rate: float = 0.1,
        **_: object,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.num_features = embed_dim
        self.tokenizer = ConvTokenizer(in_chans, embed_dim, kernel_size, n_conv)
        side = img_size
        for _ in range(n_conv):
            side = (side - 1) // 2 + 1  # each max-pool 3x3, stride 2, padding 1
        self.pos_embed = nn.Parameter(torch.zeros(1, side * side, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = torch.linspace(0, drop_path_rate, depth).tolist()  # stochastic depth grows with depth, as in CCT
        self.blocks = nn.Sequential(
            *(
                Block(embed_dim, num_heads, mlp_ratio, qkv_bias=False, attn_drop=attn_drop_rate, drop_path=dpr[i])
                for i in range(depth)
            )
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.attention_pool = nn.Linear(embed_dim, 1)  # sequence pooling: one score per token
        self.head = nn.Linear(embed_dim, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # CCT's initialisation: truncated normal (std 0.02) linear weights, zero biases, unit LayerNorms,
        # Kaiming-normal convs, and a positional embedding with std 0.2.
        trunc_normal_(self.pos_embed, std=0.2)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.tokenizer(x)  # B, N, D
        if x.shape[1] != self.pos_embed.shape[1]:
            raise DataMismatchError(
                f"CCT: {x.shape[1]} tokens from the input but the positional embedding has {self.pos_embed.shape[1]}; "
                "create the model with img_size= the input side"
            )
        x = self.pos_drop(x + self.pos_embed)
        return self.norm(self.blocks(x))  # B, N, D

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)  # B, N, D
        weights = torch.softmax(self.attention_pool(x), dim=1)  # B, N, 1: sequence pooling
        x = (weights.transpose(1, 2) @ x).squeeze(1)  # B, D
        return self.head(x)


@register_model
def cct_7_3x1(pretrained: bool = False, **kwargs) -> CCT:
    """CCT-7/3x1 for 32 px images (3.7M parameters with 10 classes); ``embed_dim``/``depth`` shrink it."""
    return _build("cct_7_3x1", CCT, (3, 32, 32), dict(kwargs, pretrained=pretrained))
