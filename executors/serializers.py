"""Request and response bodies of the control-plane REST routes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rest_framework import serializers

# DRF's stubs make Serializer generic, the runtime class is not subscriptable.
if TYPE_CHECKING:
    Serializer = serializers.Serializer[Any]
else:
    Serializer = serializers.Serializer


class RegisterRequest(Serializer):
    display_name = serializers.CharField(required=False, allow_blank=True, default="", max_length=255)


class RegisterResponse(Serializer):
    exe_id = serializers.CharField()
    registration_token = serializers.CharField(help_text="Shown once; the gateway keeps only a hash and a sealed copy.")


class BindRequest(Serializer):
    exe_id = serializers.CharField(max_length=64, allow_blank=True, default="")
    name = serializers.CharField(max_length=128, allow_blank=True, default="")
    description = serializers.CharField(allow_blank=True, default="", max_length=4096)
    is_default = serializers.BooleanField(default=False)

    def validate_exe_id(self, value: str) -> str:
        if not value:
            raise serializers.ValidationError("exe_id required")
        return value

    def validate_name(self, value: str) -> str:
        if not value.strip():
            raise serializers.ValidationError("name required")
        if any(ord(ch) < 32 for ch in value):
            raise serializers.ValidationError("name must not contain control characters")
        return value


class StatusResponse(Serializer):
    status = serializers.CharField()


class ConnectedExecutor(Serializer):
    exe_id = serializers.CharField()
    name = serializers.CharField()
    description = serializers.CharField()
    is_default = serializers.BooleanField()
    is_online = serializers.BooleanField()
    display_name = serializers.CharField(required=False)
    last_seen_at = serializers.DateTimeField(required=False)
    connected_at = serializers.DateTimeField(required=False)
    disconnected_at = serializers.DateTimeField(required=False)
    client_ip = serializers.CharField(required=False)
    client_ua = serializers.CharField(required=False)
    codex_version = serializers.CharField(required=False)
    os = serializers.CharField(required=False)


class RevokeTurnRequest(Serializer):
    turn_id = serializers.CharField(allow_blank=True, default="", max_length=255)
    # Unix seconds; bounded so Redis (double scores) can store it exactly.
    exp = serializers.IntegerField(required=False, allow_null=True, default=None, min_value=0, max_value=2**53 - 1)

    def validate_turn_id(self, value: str) -> str:
        if not value:
            raise serializers.ValidationError("turn_id required")
        return value


class ErrorResponse(Serializer):
    error = serializers.CharField()


class DirectRegisterRequest(Serializer):
    transport = serializers.CharField(required=False, default="direct_jsonrpc_v1")


class DirectRegisterResponse(Serializer):
    environment_id = serializers.CharField()
    transport = serializers.CharField()
    registration_id = serializers.CharField()
    url = serializers.CharField()


class BearerRegisterResponse(Serializer):
    id = serializers.CharField()
    executor_id = serializers.CharField()
    environment_id = serializers.CharField()
    url = serializers.CharField()
