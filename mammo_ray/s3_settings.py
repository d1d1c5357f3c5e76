"""Where S3 lives: the settings `mammo_ray.storage` opens S3 with.

Storage's own type, beside it: the study config's `storage.s3` section is this type, imported from here;
storage never imports the config.
"""

from __future__ import annotations

import os

from pydantic import BaseModel, ConfigDict, Field


class S3Config(BaseModel):
    """Where S3 lives, when not in the AWS variables. Credentials never go here: environment or profile.
    None fields fall back to the environment (AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, AWS_REGION /
    AWS_DEFAULT_REGION), then to the AWS defaults; `anonymous` reads public buckets unsigned."""

    # As the config sections: unknown keys are errors, and frozen (hashable: it keys the filesystem cache).
    model_config = ConfigDict(extra="forbid", frozen=True)

    endpoint_url: str | None = Field(
        None, description="S3 endpoint; None: AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL, else the AWS default")
    region: str | None = Field(None, description="S3 region; None: AWS_REGION or AWS_DEFAULT_REGION, else the AWS "
                                                 "default")
    anonymous: bool = Field(False, description="read public buckets unsigned (credentials: only from the "
                                               "environment or an instance profile, never the config)")

    @classmethod
    def from_env(cls) -> S3Config:
        return cls(
            endpoint_url=os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None,
            region=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None,
        )

    def merged_with_env(self) -> S3Config:
        env = S3Config.from_env()
        return S3Config(endpoint_url=self.endpoint_url or env.endpoint_url, region=self.region or env.region,
                        anonymous=self.anonymous)
