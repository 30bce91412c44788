// The gateway's HTTP surface: /healthz, /metrics and the FHIR API under its base path.
#pragma once

#include "yilian/gateway/fhir_api.hpp"
#include "yilian/gateway/http_message.hpp"
#include "yilian/gateway/metrics.hpp"
#include "yilian/gateway/resource_store.hpp"

namespace yilian::gateway {

class gateway_service {
 public:
  gateway_service(resource_store& store, const fhir_api& api, const metrics& stats)
      : store_(store), api_(api), metrics_(stats) {}

  http_response handle(const http_request& request) const;

 private:
  resource_store& store_;
  const fhir_api& api_;
  const metrics& metrics_;
};

}  // namespace yilian::gateway
