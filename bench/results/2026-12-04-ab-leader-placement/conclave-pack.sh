#!/bin/sh
exec /tmp/exp/conclave-cur "$@" --leader-placement pack
