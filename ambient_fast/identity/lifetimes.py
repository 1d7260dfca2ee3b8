"""Certificate lifetimes shared by every issuer (control plane CA, istiod client, FAKE_CA)."""

import datetime

# Istio's default workload certificate lifetime (SECRET_TTL) and root lifetime (10 years).
DEFAULT_WORKLOAD_TTL = datetime.timedelta(hours=24)
DEFAULT_ROOT_TTL = datetime.timedelta(days=3650)
