// Notification latency: the time from a write's commit (resource_store::create returning) to the
// rest-hook notification that carries it arriving at a receiving endpoint (yilian's http_server on
// 127.0.0.1). Three dispatchers are measured: one in the writing process (woken by the commit), one
// as in another gateway process sharing the database (woken by PostgreSQL NOTIFY at the commit),
// and one that only polls the outbox.
//
//   bench_subscriptions --database-url URL [--writes 500] [--interval-ms 5] [--poll-ms 200]
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <map>
#include <mutex>
#include <pqxx/pqxx>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "yilian/fhir/json.hpp"
#include "yilian/gateway/http_server.hpp"
#include "yilian/gateway/resource_store.hpp"
#include "yilian/gateway/subscriptions.hpp"
#include "yilian/gateway/worker_pool.hpp"

using namespace yilian;
using clock_type = std::chrono::steady_clock;

namespace {

struct options {
  std::string database_url;
  int writes = 500;
  int interval_ms = 5;
  int poll_ms = 200;
};

const char* const usage =
    "usage: bench_subscriptions --database-url URL [--writes 500] [--interval-ms 5] [--poll-ms 200]\n"
    "  --database-url URL  PostgreSQL server (default: $YILIAN_DATABASE_URL); a scratch database is created and dropped\n"
    "  --writes N          Observations written per mode, one at a time\n"
    "  --interval-ms N     pause between writes\n"
    "  --poll-ms N         poll interval of the dispatchers\n";

options parse_options(int argc, char** argv) {
  options o;
  if (const char* env = std::getenv("YILIAN_DATABASE_URL")) o.database_url = env;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument(a + " needs a value\n" + usage);
      return argv[++i];
    };
    if (a == "--database-url") o.database_url = value();
    else if (a == "--writes") o.writes = std::stoi(value());
    else if (a == "--interval-ms") o.interval_ms = std::stoi(value());
    else if (a == "--poll-ms") o.poll_ms = std::stoi(value());
    else if (a == "--help" || a == "-h") {
      std::cout << usage;
      std::exit(0);
    } else {
      throw std::invalid_argument("unknown option " + a + "\n" + usage);
    }
  }
  if (o.database_url.empty()) throw std::invalid_argument(std::string("no database given\n") + usage);
  return o;
}

// Replaces the database name of a postgresql:// URL.
std::string with_database(const std::string& url, const std::string& name) {
  auto scheme = url.find("://");
  auto slash = url.find('/', scheme + 3);
  auto query = url.find('?', scheme + 3);
  if (slash == std::string::npos || (query != std::string::npos && slash > query)) {
    auto at = query == std::string::npos ? url.size() : query;
    return url.substr(0, at) + "/" + name + url.substr(at);
  }
  auto end = query == std::string::npos ? url.size() : query;
  return url.substr(0, slash + 1) + name + url.substr(end);
}

// Arrival time of each focus reference.
class receiver {
 public:
  receiver()
      : server_({.host = "127.0.0.1", .port = 0, .io_threads = 1},
                [this](const gateway::http_request& r) { return handle(r); }, workers_) {
    server_.start();
  }
  ~receiver() {
    server_.stop();
    server_.wait();
  }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(server_.port()) + "/hook"; }
  std::map<std::string, clock_type::time_point> arrivals() {
    std::lock_guard lock(mutex_);
    return arrivals_;
  }

 private:
  gateway::http_response handle(const gateway::http_request& req) {
    auto now = clock_type::now();
    fhir::value bundle;
    fhir::issue_list issues;
    if (fhir::parse_json(req.body, bundle, issues)) {
      std::lock_guard lock(mutex_);
      for (const auto& entry : bundle.find("entry")->items())
        if (const fhir::value* request = entry.find("request"); request && request->find("method")->text() != "GET")
          arrivals_.emplace(request->find("url")->text(), now);
    }
    return {};
  }

  gateway::worker_pool workers_{2};
  gateway::http_server server_;
  std::mutex mutex_;
  std::map<std::string, clock_type::time_point> arrivals_;
};

double percentile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<std::size_t>(p * static_cast<double>(v.size())))];
}

enum class wake_mode { same_process, notify, poll_only };

void measure(const options& o, const std::string& url, wake_mode mode) {
  const bool wake_on_commit = mode == wake_mode::same_process;
  gateway::resource_store store(url, 4);
  auto participant = std::make_shared<gateway::subscription_participant>();
  store.add_participant(participant);
  receiver endpoint;
  gateway::request_context ctx;
  fhir::value sub;
  fhir::issue_list issues;
  fhir::parse_json(R"({"resourceType":"Subscription","status":"active","reason":"bench","criteria":"Observation",
    "channel":{"type":"rest-hook","endpoint":")" + endpoint.url() + R"(","payload":"application/fhir+json",
    "_payload":{"extension":[{"url":")" + gateway::backport_payload_content_url + R"(","valueCode":"id-only"}]}}})",
                   sub, issues);
  std::string sub_id = store.create(ctx, "Subscription", sub).resource.id;
  gateway::subscription_dispatcher_options d;
  d.base_url = "http://bench.local/fhir";
  d.poll_interval = std::chrono::milliseconds(o.poll_ms);
  if (mode == wake_mode::notify) d.listen_database_url = url;
  gateway::subscription_dispatcher dispatcher(store, d, wake_on_commit ? participant : nullptr);
  dispatcher.start();

  std::map<std::string, clock_type::time_point> committed;
  fhir::value obs;
  fhir::parse_json(R"({"resourceType":"Observation","status":"final","code":{"coding":[{"system":"http://loinc.org",
    "code":"2823-3"}]},"valueQuantity":{"value":4.1,"unit":"mmol/L"}})",
                   obs, issues);
  for (int i = 0; i < o.writes; ++i) {
    std::string id = store.create(ctx, "Observation", obs).resource.id;
    committed.emplace("Observation/" + id, clock_type::now());
    std::this_thread::sleep_for(std::chrono::milliseconds(o.interval_ms));
  }
  auto deadline = clock_type::now() + std::chrono::seconds(30);
  while (endpoint.arrivals().size() < committed.size() && clock_type::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  dispatcher.stop();
  auto arrivals = endpoint.arrivals();
  std::vector<double> ms;
  for (const auto& [ref, t] : committed)
    if (auto a = arrivals.find(ref); a != arrivals.end())
      ms.push_back(std::chrono::duration<double, std::milli>(a->second - t).count());
  std::printf("| %s | %d | %zu | %.2f | %.2f | %.2f |\n",
              mode == wake_mode::same_process ? "same process (woken by the commit)"
              : mode == wake_mode::notify     ? "other process (LISTEN/NOTIFY)"
                                              : "other process (polling only)",
              o.poll_ms,
              ms.size(), percentile(ms, 0.5), percentile(ms, 0.99), percentile(ms, 1.0));
  store.remove(ctx, "Subscription", sub_id);
}

int run(const options& o) {
  std::string name = "bench_subscriptions_" + std::to_string(::getpid());
  {
    pqxx::connection admin(with_database(o.database_url, "postgres"));
    pqxx::nontransaction tx(admin);
    tx.exec("CREATE DATABASE " + admin.quote_name(name));
  }
  std::string url = with_database(o.database_url, name);
  {
    gateway::resource_store store(url, 1);
    store.migrate();
  }
  std::printf("Notification latency, commit -> rest-hook arrival (%d writes, one every %d ms, payload id-only)\n\n",
              o.writes, o.interval_ms);
  std::printf("| dispatcher | poll ms | delivered | p50 ms | p99 ms | max ms |\n|---|---|---|---|---|---|\n");
  measure(o, url, wake_mode::same_process);
  measure(o, url, wake_mode::notify);
  measure(o, url, wake_mode::poll_only);
  pqxx::connection admin(with_database(o.database_url, "postgres"));
  pqxx::nontransaction tx(admin);
  tx.exec("DROP DATABASE " + admin.quote_name(name) + " WITH (FORCE)");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(parse_options(argc, argv));
  } catch (const std::exception& e) {
    std::cerr << "bench_subscriptions: " << e.what() << "\n";
    return 1;
  }
}
