"""On-demand prices (USD per hour, Linux, us-east-1) of common EC2 instance types, for the plan's
cost estimate. List prices change and differ per region and for spot: ``aws.prices`` in the
inventory overrides any type, and a type missing here is shown as unpriced rather than guessed.
"""

from __future__ import annotations

#: when this table was taken from the EC2 on-demand price list (shown with estimates)
AS_OF = "2024-06"

#: instance type -> USD per hour (us-east-1, on-demand, Linux)
PRICES: dict[str, float] = {
    # NVIDIA T4
    "g4dn.xlarge": 0.526, "g4dn.2xlarge": 0.752, "g4dn.4xlarge": 1.204, "g4dn.8xlarge": 2.176,
    "g4dn.12xlarge": 3.912, "g4dn.16xlarge": 4.352,
    # NVIDIA A10G
    "g5.xlarge": 1.006, "g5.2xlarge": 1.212, "g5.4xlarge": 1.624, "g5.8xlarge": 2.448,
    "g5.12xlarge": 5.672, "g5.16xlarge": 4.096, "g5.48xlarge": 16.288,
    # NVIDIA L4 / L40S
    "g6.xlarge": 0.8048, "g6.2xlarge": 0.9776, "g6.4xlarge": 1.3232, "g6.12xlarge": 4.6016,
    "g6e.xlarge": 1.861, "g6e.2xlarge": 2.24208,
    # NVIDIA V100 / A100 / H100
    "p3.2xlarge": 3.06, "p3.8xlarge": 12.24, "p3.16xlarge": 24.48,
    "p4d.24xlarge": 32.7726, "p5.48xlarge": 98.32,
    # CPU hosts, e.g. for the FL server (server_instance_type)
    "t3.medium": 0.0416, "t3.large": 0.0832, "t3.xlarge": 0.1664, "t3.2xlarge": 0.3328,
    "m5.large": 0.096, "m5.xlarge": 0.192, "m5.2xlarge": 0.384,
    "c5.large": 0.085, "c5.xlarge": 0.17, "c5.2xlarge": 0.34,
}


def price_of(instance_type: str, overrides: dict[str, float] | None = None) -> float | None:
    """USD per hour for ``instance_type``: the inventory's override, else the table, else None."""
    if overrides and instance_type in overrides:
        return overrides[instance_type]
    return PRICES.get(instance_type)
