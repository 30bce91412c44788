#include "yilian/gateway/service.hpp"


#include <pqxx/pqxx>

namespace yilian::gateway {
namespace {
std::string_view path_of(std::string_view target) { return target.substr(0, target.find('?')); }
}  // namespace

http_response gateway_service::handle(const http_request& request) const {
  std::string_view path = path_of(request.target);
  if (path == "/healthz") {
    http_response res;
    res.set_header("Content-Type", "application/json");
    try {
      auto conn = store_.acquire();
      pqxx::nontransaction tx(*conn);
      tx.exec("SELECT 1");
      res.body = R"({"status":"ok","database":"ok"})";
    } catch (const std::exception&) {
      res.status = 503;
      res.body = R"({"status":"unavailable","database":"unreachable"})";
    }
    return res;
  }
  if (path == "/metrics") {
    http_response res;
    res.set_header("Content-Type", "text/plain; version=0.0.4");
    res.body = metrics_.prometheus_text();
    return res;
  }
  return api_.handle(request);
}

}  // namespace yilian::gateway
