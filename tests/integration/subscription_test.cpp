// Subscriptions end to end against a real PostgreSQL: the dispatcher posts to a receiving endpoint
// (yilian's own http_server with a capturing handler) that fails or is gone for a while, the
// dispatcher and store are restarted in between, and every matching change must still arrive, in
// order, with no gap in event numbers.
#include <arpa/inet.h>
#include <doctest/doctest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <thread>

#include "test_database.hpp"
#include "yilian/fhir/json.hpp"
#include "yilian/gateway/fhir_api.hpp"
#include "yilian/gateway/http_server.hpp"
#include "yilian/gateway/resource_store.hpp"
#include "yilian/gateway/subscriptions.hpp"
#include "yilian/gateway/worker_pool.hpp"

using namespace yilian;
using namespace std::chrono_literals;

namespace {

fhir::value parse(const std::string& json) {
  fhir::value v;
  fhir::issue_list issues;
  REQUIRE_MESSAGE(fhir::parse_json(json, v, issues), json);
  return v;
}

std::string text(const fhir::value* v) { return v && v->is_string() ? v->text() : std::string(); }

// One notification as the receiver saw it.
struct notification {
  std::string path;
  std::string authorization;
  std::string type;                   // handshake | heartbeat | event-notification
  std::string status;
  std::vector<std::int64_t> events;   // event numbers
  std::vector<std::string> focus;     // focus references (id-only, full-resource)
  fhir::value bundle;
  bool accepted = false;              // answered 2xx
};

notification read_notification(const gateway::http_request& req) {
  notification n;
  n.path = req.target;
  n.authorization = std::string(req.header("Authorization"));
  n.bundle = parse(req.body);
  const auto& entries = n.bundle.find("entry")->items();
  const fhir::value& status = *entries.front().find("resource");
  for (const auto& p : status.find("parameter")->items()) {
    std::string name = text(p.find("name"));
    if (name == "type") n.type = text(p.find("valueCode"));
    if (name == "status") n.status = text(p.find("valueCode"));
    if (name != "notification-event") continue;
    for (const auto& part : p.find("part")->items()) {
      if (text(part.find("name")) == "event-number") n.events.push_back(std::stoll(text(part.find("valueString"))));
      if (text(part.find("name")) == "focus") n.focus.push_back(text(part.find("valueReference")->find("reference")));
    }
  }
  return n;
}

// A receiving endpoint on a fixed port that can answer 503, or be stopped and started again.
class receiver {
 public:
  receiver() { start(); }
  ~receiver() { stop(); }

  void start() {
    gateway::http_server_options o;
    o.port = port_;
    o.io_threads = 1;
    server_ = std::make_unique<gateway::http_server>(o, [this](const gateway::http_request& r) { return handle(r); },
                                                     workers_);
    server_->start();
    port_ = server_->port();
  }
  void stop() {
    if (!server_) return;
    server_->stop(1000ms);
    server_->wait();
    server_.reset();
  }

  std::string url(const std::string& path = "/hook") const { return "http://127.0.0.1:" + std::to_string(port_) + path; }
  void answer(int status) { status_ = status; }
  void delay(std::chrono::milliseconds d) { delay_ = d; }

  std::vector<notification> received() {
    std::lock_guard lock(mutex_);
    return received_;
  }
  std::vector<notification> accepted(const std::string& path = "/hook") {
    std::vector<notification> out;
    for (auto& n : received())
      if (n.accepted && n.path == path) out.push_back(std::move(n));
    return out;
  }
  int max_concurrent_per_path() const { return max_concurrent_; }

 private:
  gateway::http_response handle(const gateway::http_request& req) {
    notification n = read_notification(req);
    {
      std::lock_guard lock(mutex_);
      max_concurrent_ = std::max(max_concurrent_, ++in_flight_[req.target]);
    }
    std::this_thread::sleep_for(delay_.load());
    gateway::http_response res;
    res.status = status_;
    n.accepted = status_ >= 200 && status_ < 300;
    std::lock_guard lock(mutex_);
    --in_flight_[req.target];
    received_.push_back(std::move(n));
    return res;
  }

  gateway::worker_pool workers_{4};
  std::unique_ptr<gateway::http_server> server_;
  std::uint16_t port_ = 0;
  std::atomic<int> status_{200};
  std::atomic<std::chrono::milliseconds> delay_{0ms};
  std::mutex mutex_;
  std::vector<notification> received_;
  std::map<std::string, int> in_flight_;
  int max_concurrent_ = 0;
};

// A gateway process: store, participant and dispatcher on one database.
struct gateway_process {
  gateway::resource_store store;
  std::shared_ptr<gateway::subscription_participant> participant = std::make_shared<gateway::subscription_participant>();
  gateway::subscription_dispatcher dispatcher;

  explicit gateway_process(const std::string& url, gateway::subscription_dispatcher_options options = fast())
      : store(url, 4), dispatcher(store, options, participant) {
    store.migrate();
    store.add_participant(participant);
  }

  static gateway::subscription_dispatcher_options fast() {
    gateway::subscription_dispatcher_options o;
    o.base_url = "http://test.local/fhir";
    o.poll_interval = 50ms;
    o.retry_min = 30ms;
    o.retry_max = 150ms;
    o.failures_before_error = 3;
    o.http_timeout = 2000ms;
    o.lease = 5000ms;
    return o;
  }
};

fhir::value subscription(const std::string& criteria, const std::string& endpoint, const std::string& content,
                         const std::string& status = "requested") {
  std::string payload = content.empty() ? std::string()
                                        : R"(,"payload":"application/fhir+json","_payload":{"extension":[{"url":")" +
                                              std::string(gateway::backport_payload_content_url) +
                                              R"(","valueCode":")" + content + R"("}]})";
  return parse(R"({"resourceType":"Subscription","status":")" + status + R"(","reason":"test","criteria":")" + criteria +
               R"(","channel":{"type":"rest-hook","endpoint":")" + endpoint +
               R"(","header":["Authorization: Bearer s3cret"])" + payload + "}}");
}

fhir::value observation(const std::string& code, const std::string& value = "4.1") {
  return parse(R"({"resourceType":"Observation","status":"final","code":{"coding":[{"system":"http://loinc.org","code":")" +
               code + R"("}]},"valueQuantity":{"value":)" + value + "}}");
}

fhir::value patient(const std::string& gender) {
  return parse(R"({"resourceType":"Patient","gender":")" + gender + R"(","name":[{"text":"王芳"}]})");
}

bool eventually(const std::function<bool()>& condition, std::chrono::milliseconds timeout = 10'000ms) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (condition()) return true;
    std::this_thread::sleep_for(10ms);
  }
  return condition();
}

std::string resource_status(gateway::resource_store& store, const std::string& id, std::string* error = nullptr) {
  auto r = store.read({}, "Subscription", id);
  if (!r) return {};
  fhir::value v = parse(r->json);
  if (error) *error = text(v.find("error"));
  return text(v.find("status"));
}

// Every accepted event number in order: each notification continues where the previous accepted
// one ended or repeats (at least once), never skips.
std::vector<std::int64_t> delivered_in_order(const std::vector<notification>& accepted, std::vector<std::string>* focus) {
  std::vector<std::int64_t> numbers;
  std::int64_t highest = 0;
  for (const auto& n : accepted) {
    for (std::size_t i = 0; i < n.events.size(); ++i) {
      std::int64_t e = n.events[i];
      CHECK_MESSAGE(e <= highest + 1, "event " << e << " arrived after only " << highest << " were delivered");
      if (e == highest + 1) {
        highest = e;
        numbers.push_back(e);
        if (focus && i < n.focus.size()) focus->push_back(n.focus[i]);
      }
    }
  }
  return numbers;
}

// A minimal websocket client over a POSIX socket (text frames shorter than 126 bytes).
class websocket_client {
 public:
  websocket_client(std::uint16_t port, const std::string& path) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    write_all("GET " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n");
    while (buffer_.find("\r\n\r\n") == std::string::npos) REQUIRE(read_some(5000ms));
    REQUIRE(buffer_.starts_with("HTTP/1.1 101"));
    buffer_.erase(0, buffer_.find("\r\n\r\n") + 4);
  }
  ~websocket_client() { ::close(fd_); }
  websocket_client(const websocket_client&) = delete;
  websocket_client& operator=(const websocket_client&) = delete;

  void send(const std::string& text) {
    std::string frame{static_cast<char>(0x81), static_cast<char>(0x80 | text.size())};
    const char mask[4] = {0x12, 0x34, 0x56, 0x78};
    frame.append(mask, 4);
    for (std::size_t i = 0; i < text.size(); ++i) frame.push_back(static_cast<char>(text[i] ^ mask[i % 4]));
    write_all(frame);
  }

  // The next text message, or "" after the timeout.
  std::string receive(std::chrono::milliseconds timeout = 5000ms) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      if (buffer_.size() >= 2) {
        std::size_t length = static_cast<unsigned char>(buffer_[1]) & 0x7f;
        if (buffer_.size() >= 2 + length) {
          std::string payload = buffer_.substr(2, length);
          bool text_frame = (static_cast<unsigned char>(buffer_[0]) & 0x0f) == 1;
          buffer_.erase(0, 2 + length);
          if (text_frame) return payload;
          continue;
        }
      }
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left <= 0ms || !read_some(left)) return {};
    }
  }

 private:
  void write_all(const std::string& data) {
    REQUIRE(::send(fd_, data.data(), data.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(data.size()));
  }
  bool read_some(std::chrono::milliseconds timeout) {
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(timeout.count())) <= 0) return false;
    char chunk[4096];
    auto n = ::recv(fd_, chunk, sizeof chunk, 0);
    if (n <= 0) return false;
    buffer_.append(chunk, static_cast<std::size_t>(n));
    return true;
  }

  int fd_ = -1;
  std::string buffer_;
};

#define REQUIRE_DATABASE()                                                   \
  if (!std::getenv("YILIAN_TEST_DATABASE_URL_FILE")) {                       \
    MESSAGE("skipped: YILIAN_TEST_DATABASE_URL_FILE is not set");           \
    return;                                                                  \
  }

}  // namespace

TEST_CASE("subscriptions: every matching change arrives in order while the endpoint is down and the gateway restarts") {
  REQUIRE_DATABASE();
  std::string url = test::fresh_database_url("subscription_delivery");
  receiver endpoint;
  gateway::request_context ctx;
  auto gw = std::make_unique<gateway_process>(url);
  std::string sub_id =
      gw->store.create(ctx, "Subscription", subscription("Observation?code=http://loinc.org|2823-3", endpoint.url(), "id-only"))
          .resource.id;
  gw->dispatcher.start();

  // Handshake, then the server sets the subscription active.
  REQUIRE(eventually([&] { return resource_status(gw->store, sub_id) == "active"; }));
  auto first = endpoint.accepted();
  REQUIRE(!first.empty());
  CHECK(first.front().type == "handshake");
  CHECK(first.front().authorization == "Bearer s3cret");

  std::vector<std::string> expected;  // focus of every matching change, in commit order
  auto change = [&](const std::string& code, std::string id = {}) {
    fhir::value obs = observation(code);
    std::string written =
        id.empty() ? gw->store.create(ctx, "Observation", std::move(obs)).resource.id
                   : gw->store.update(ctx, "Observation", id, std::move(obs)).resource.id;
    if (code == "2823-3") expected.push_back("http://test.local/fhir/Observation/" + written);
    return written;
  };
  // Phase 1: endpoint up.
  std::vector<std::string> ids;
  for (int i = 0; i < 5; ++i) ids.push_back(change("2823-3"));
  change("718-7");  // not matching
  change("2823-3", ids[0]);
  REQUIRE(eventually([&] { return delivered_in_order(endpoint.accepted(), nullptr).size() == expected.size(); }));

  // Phase 2: the endpoint answers 503; after 3 failures the subscription is in error.
  endpoint.answer(503);
  for (int i = 0; i < 3; ++i) ids.push_back(change("2823-3"));
  std::string error;
  REQUIRE(eventually([&] { return resource_status(gw->store, sub_id, &error) == "error"; }));
  CHECK(error.find("503") != std::string::npos);
  // An update that stops matching is not notified; its later deletion neither.
  change("718-7", ids[1]);
  gw->store.remove(ctx, "Observation", ids[1]);
  // A matching resource's deletion is notified.
  gw->store.remove(ctx, "Observation", ids[2]);
  expected.push_back("http://test.local/fhir/Observation/" + ids[2]);

  // Phase 3: the endpoint is gone and the gateway restarts while changes keep coming.
  endpoint.stop();
  for (int i = 0; i < 3; ++i) ids.push_back(change("2823-3"));
  gw.reset();
  gw = std::make_unique<gateway_process>(url);
  for (int i = 0; i < 2; ++i) ids.push_back(change("2823-3"));
  change("718-7");
  gw->dispatcher.start();
  std::this_thread::sleep_for(200ms);  // a few attempts against the closed port
  endpoint.answer(200);
  endpoint.start();

  std::vector<std::string> focus;
  REQUIRE(eventually([&] {
    focus.clear();
    return delivered_in_order(endpoint.accepted(), &focus).size() == expected.size();
  }));
  CHECK(focus == expected);
  REQUIRE(eventually([&] { return resource_status(gw->store, sub_id, &error) == "active"; }));
  CHECK(error.empty());
  // Nothing beyond the matching changes was numbered.
  for (const auto& n : endpoint.accepted())
    for (auto e : n.events) CHECK(e <= static_cast<std::int64_t>(expected.size()));
}

TEST_CASE("subscriptions: payload content empty, id-only and full-resource; deletions notify") {
  REQUIRE_DATABASE();
  receiver endpoint;
  gateway_process gw(test::fresh_database_url("subscription_payload"));
  gateway::request_context ctx;
  gw.store.create(ctx, "Subscription", subscription("Patient?gender=female", endpoint.url("/empty"), "", "active"));
  gw.store.create(ctx, "Subscription", subscription("Patient?gender=female", endpoint.url("/id-only"), "id-only", "active"));
  gw.store.create(ctx, "Subscription", subscription("Patient?gender=female", endpoint.url("/full"), "full-resource", "active"));
  gw.dispatcher.start();
  std::string id = gw.store.create(ctx, "Patient", patient("female")).resource.id;
  gw.store.create(ctx, "Patient", patient("male"));
  gw.store.remove(ctx, "Patient", id);
  for (const char* path : {"/empty", "/id-only", "/full"})
    REQUIRE_MESSAGE(eventually([&] { return delivered_in_order(endpoint.accepted(path), nullptr).size() == 2; }), path);

  auto entries = [](const notification& n) -> const std::vector<fhir::value>& { return n.bundle.find("entry")->items(); };
  for (const auto& n : endpoint.accepted("/empty")) {
    CHECK(n.focus.empty());
    CHECK(entries(n).size() == 1);
    CHECK(text(n.bundle.find("type")) == "history");
  }
  std::vector<std::string> methods;
  for (const auto& n : endpoint.accepted("/id-only")) {
    CHECK(n.focus.size() == n.events.size());
    for (std::size_t i = 1; i < entries(n).size(); ++i) {
      CHECK(entries(n)[i].find("resource") == nullptr);
      CHECK(text(entries(n)[i].find("fullUrl")) == "http://test.local/fhir/Patient/" + id);
      methods.push_back(text(entries(n)[i].find("request")->find("method")));
    }
  }
  CHECK(methods == std::vector<std::string>{"POST", "DELETE"});
  bool saw_resource = false;
  for (const auto& n : endpoint.accepted("/full")) {
    const auto& status = *entries(n)[0].find("resource");
    CHECK(text(status.find("meta")->find("profile")->items().data()) == gateway::backport_status_profile);
    for (std::size_t i = 1; i < entries(n).size(); ++i)
      if (const fhir::value* r = entries(n)[i].find("resource")) {
        CHECK(text(r->find("id")) == id);
        CHECK(text(r->find("gender")) == "female");
        saw_resource = true;
      }
  }
  CHECK(saw_resource);
}

TEST_CASE("subscriptions: heartbeats at the backport heartbeat period while nothing changes") {
  REQUIRE_DATABASE();
  receiver endpoint;
  gateway_process gw(test::fresh_database_url("subscription_heartbeat"));
  gateway::request_context ctx;
  fhir::value sub = subscription("Patient", endpoint.url(), "id-only", "active");
  fhir::value heartbeat = parse(std::string(R"({"url":")") + gateway::backport_heartbeat_period_url +
                                R"(","valueUnsignedInt":1})");
  fhir::value extensions = fhir::value::make_array();
  extensions.push_back(std::move(heartbeat));
  sub.find("channel")->set("extension", std::move(extensions));
  gw.store.create(ctx, "Subscription", sub);
  auto started = std::chrono::steady_clock::now();
  gw.dispatcher.start();
  REQUIRE(eventually([&] { return endpoint.accepted().size() >= 2; }, 5000ms));
  auto elapsed = std::chrono::steady_clock::now() - started;
  CHECK(elapsed >= 900ms);  // the first at once, the second a period later
  for (const auto& n : endpoint.accepted()) {
    CHECK(n.type == "heartbeat");
    CHECK(n.events.empty());
  }
}

TEST_CASE("subscriptions: bulk writes (put_all) notify each matching resource, also right after a new subscription") {
  REQUIRE_DATABASE();
  receiver endpoint;
  gateway_process gw(test::fresh_database_url("subscription_bulk"));
  gateway::request_context ctx;
  gw.store.create(ctx, "Subscription", subscription("Patient?gender=female", endpoint.url("/a"), "id-only", "active"));
  std::vector<gateway::batch_item> items;
  for (int i = 0; i < 6; ++i) items.push_back({"Patient", "bulk-" + std::to_string(i), patient(i % 2 ? "male" : "female")});
  gw.store.put_all(ctx, std::move(items));
  // A batch that creates a subscription and then writes what it matches.
  fhir::value sub = subscription("Patient?gender=male", endpoint.url("/b"), "id-only", "active");
  items.clear();
  items.push_back({"Subscription", "bulk-sub", std::move(sub)});
  items.push_back({"Patient", "bulk-m", patient("male")});
  gw.store.put_all(ctx, std::move(items));
  gw.dispatcher.start();
  std::vector<std::string> a, b;
  REQUIRE(eventually([&] { a.clear(); return delivered_in_order(endpoint.accepted("/a"), &a).size() == 3; }));
  REQUIRE(eventually([&] { b.clear(); return delivered_in_order(endpoint.accepted("/b"), &b).size() == 1; }));
  CHECK(a == std::vector<std::string>{"http://test.local/fhir/Patient/bulk-0", "http://test.local/fhir/Patient/bulk-2",
                                      "http://test.local/fhir/Patient/bulk-4"});
  CHECK(b == std::vector<std::string>{"http://test.local/fhir/Patient/bulk-m"});
}

TEST_CASE("subscriptions: a claim left by a crashed process expires and delivery resumes") {
  REQUIRE_DATABASE();
  std::string url = test::fresh_database_url("subscription_lease");
  receiver endpoint;
  gateway_process gw(url);
  gateway::request_context ctx;
  std::string sub_id =
      gw.store.create(ctx, "Subscription", subscription("Patient", endpoint.url(), "id-only", "active")).resource.id;
  gw.store.create(ctx, "Patient", patient("female"));
  {
    pqxx::connection c(url);
    pqxx::work tx(c);
    tx.exec_params("UPDATE subscription_delivery SET leased_by = 'crashed', leased_until = now() + interval '1 second' "
                   "WHERE sub_id = $1",
                   sub_id);
    tx.commit();
  }
  auto started = std::chrono::steady_clock::now();
  gw.dispatcher.start();
  REQUIRE(eventually([&] { return delivered_in_order(endpoint.accepted(), nullptr).size() == 1; }));
  CHECK(std::chrono::steady_clock::now() - started >= 800ms);  // not before the lease ran out
}

TEST_CASE("subscriptions: invalid criteria are refused; $status and $events report and repair") {
  REQUIRE_DATABASE();
  receiver endpoint;
  gateway_process gw(test::fresh_database_url("subscription_ops"));
  gateway::fhir_api_options api_options;
  api_options.base_url = "http://test.local/fhir";
  gateway::fhir_api api(gw.store, api_options);
  gateway::add_subscription_operations(api, gw.store);
  auto call = [&](std::string method, std::string target, std::string body = {}) {
    gateway::http_request req;
    req.method = std::move(method);
    req.target = std::move(target);
    req.body = std::move(body);
    if (!req.body.empty()) req.headers.push_back({"Content-Type", "application/fhir+json"});
    return api.handle(req);
  };
  for (const char* criteria : {"Observation?no-such-param=1", "NotAType?code=1", "Observation?date=notadate"}) {
    auto res = call("POST", "/fhir/Subscription", fhir::to_json(subscription(criteria, endpoint.url(), "id-only")));
    CHECK_MESSAGE(res.status == 422, criteria << ": " << res.body);
    CHECK(res.body.find("Subscription.criteria") != std::string::npos);
  }
  auto bad_endpoint = call("POST", "/fhir/Subscription", fhir::to_json(subscription("Patient", "ftp://x", "id-only")));
  CHECK(bad_endpoint.status == 422);

  auto created = call("POST", "/fhir/Subscription", fhir::to_json(subscription("Patient", endpoint.url(), "id-only", "active")));
  REQUIRE(created.status == 201);
  std::string sub_id = text(parse(created.body).find("id"));
  gateway::request_context ctx;
  std::vector<std::string> patients;
  for (int i = 0; i < 4; ++i) patients.push_back(gw.store.create(ctx, "Patient", patient("female")).resource.id);

  auto status = call("GET", "/fhir/Subscription/" + sub_id + "/$status");
  REQUIRE(status.status == 200);
  fhir::value status_bundle = parse(status.body);
  CHECK(text(status_bundle.find("type")) == "searchset");
  std::map<std::string, std::string> values;
  for (const auto& p : status_bundle.find("entry")->items()[0].find("resource")->find("parameter")->items())
    for (const auto& m : p.members())
      if (m.name.starts_with("value") && m.val.is_string()) values[text(p.find("name"))] = m.val.text();
  CHECK(values["type"] == "query-status");
  CHECK(values["status"] == "active");
  CHECK(values["events-since-subscription-start"] == "4");
  CHECK(values["topic"] == "Patient");

  auto events = call("GET", "/fhir/Subscription/" + sub_id + "/$events?eventsSinceNumber=2&eventsUntilNumber=3&content=full-resource");
  REQUIRE(events.status == 200);
  gateway::http_request fake;
  fake.body = events.body;
  notification n = read_notification(fake);
  CHECK(n.type == "query-event");
  CHECK(n.events == std::vector<std::int64_t>{2, 3});
  CHECK(n.focus == std::vector<std::string>{"http://test.local/fhir/Patient/" + patients[1],
                                            "http://test.local/fhir/Patient/" + patients[2]});
  CHECK(text(n.bundle.find("entry")->items()[1].find("resource")->find("id")) == patients[1]);
  CHECK(call("GET", "/fhir/Subscription/" + sub_id + "/$events?eventsSinceNumber=x").status == 400);
  CHECK(call("GET", "/fhir/Subscription/nope/$status").status == 404);

  // Status off stops notifying; deleting forgets the subscription.
  fhir::value off = subscription("Patient", endpoint.url(), "id-only", "off");
  off.set("id", fhir::value::make_string(sub_id));
  REQUIRE(call("PUT", "/fhir/Subscription/" + sub_id, fhir::to_json(off)).status == 200);
  gw.store.create(ctx, "Patient", patient("male"));
  CHECK(call("GET", "/fhir/Subscription/" + sub_id + "/$status").body.find("\"off\"") != std::string::npos);
  gw.dispatcher.start();
  std::this_thread::sleep_for(300ms);
  CHECK(endpoint.received().empty());
}

TEST_CASE("subscriptions: two gateways on one database never deliver one subscription concurrently") {
  REQUIRE_DATABASE();
  std::string url = test::fresh_database_url("subscription_two");
  receiver endpoint;
  endpoint.delay(15ms);
  auto options = gateway_process::fast();
  options.max_events_per_notification = 1;
  options.threads = 3;
  gateway_process a(url, options);
  gateway_process b(url, options);
  gateway::request_context ctx;
  const std::vector<std::string> paths = {"/s1", "/s2", "/s3"};
  for (const auto& p : paths) a.store.create(ctx, "Subscription", subscription("Observation", endpoint.url(p), "id-only", "active"));
  a.dispatcher.start();
  b.dispatcher.start();
  for (int i = 0; i < 15; ++i) (i % 2 ? a : b).store.create(ctx, "Observation", observation("2823-3"));
  for (const auto& p : paths)
    REQUIRE_MESSAGE(eventually([&] { return delivered_in_order(endpoint.accepted(p), nullptr).size() == 15; }), p);
  CHECK(endpoint.max_concurrent_per_path() == 1);
  // Without failures every event went out exactly once.
  for (const auto& p : paths) CHECK(endpoint.accepted(p).size() == 15);
}

TEST_CASE("subscriptions: websocket channel binds with the id and pings on every notification") {
  REQUIRE_DATABASE();
  gateway_process gw(test::fresh_database_url("subscription_websocket"));
  auto websockets = std::make_shared<gateway::subscription_websockets>(gw.store);
  gw.dispatcher.attach_websockets(websockets);
  gateway::worker_pool workers(2);
  gateway::http_server server({.host = "127.0.0.1", .port = 0, .io_threads = 1},
                              [](const gateway::http_request&) { return gateway::http_response{}; }, workers);
  server.add_websocket_endpoint(websockets->endpoint("/websocket"));
  server.start();
  gw.dispatcher.start();

  gateway::request_context ctx;
  fhir::value sub = parse(R"({"resourceType":"Subscription","status":"requested","reason":"test","criteria":"Patient",
    "channel":{"type":"websocket"}})");
  std::string sub_id = gw.store.create(ctx, "Subscription", sub).resource.id;
  websocket_client client(server.port(), "/websocket");
  client.send("bind nope");
  CHECK(client.receive().starts_with("error nope"));
  client.send("bind " + sub_id);
  CHECK(client.receive() == "bound " + sub_id);
  REQUIRE(eventually([&] { return resource_status(gw.store, sub_id) == "active"; }));

  for (int i = 0; i < 3; ++i) {
    gw.store.create(ctx, "Patient", patient("female"));
    CHECK(client.receive() == "ping " + sub_id);
  }
  CHECK(client.receive(200ms).empty());
  gw.dispatcher.stop();
  server.stop(100ms);
  server.wait();
}

TEST_CASE("subscriptions: a dispatcher in another process is woken by the commit, not by its poll") {
  REQUIRE_DATABASE();
  std::string url = test::fresh_database_url("subscription_listen");
  receiver endpoint;
  auto options = gateway_process::fast();
  options.poll_interval = 10'000ms;
  gateway_process writer(url, options);
  options.listen_database_url = url;
  gateway_process deliverer(url, options);
  gateway::request_context ctx;
  writer.store.create(ctx, "Subscription", subscription("Patient", endpoint.url(), "id-only", "active"));
  deliverer.dispatcher.start();
  std::this_thread::sleep_for(300ms);  // its first pass is over: from now on only a wake-up helps
  for (int i = 0; i < 3; ++i) {
    auto before = endpoint.accepted().size();
    writer.store.create(ctx, "Patient", patient("female"));
    CHECK(eventually([&] { return endpoint.accepted().size() > before; }, 2000ms));
  }
}
