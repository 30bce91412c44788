// Reliable FHIR R4 Subscriptions (rest-hook and websocket channels) with the notification shape,
// event numbers, heartbeats, $status and $events of the Subscriptions R5 Backport IG for R4.
//
//   write ──▶ subscription_participant (in the write's transaction)
//               • keeps the `subscription` row in step with each Subscription resource
//               • for each active subscription whose criteria the changed resource matches,
//                 takes the next gap-free event number and inserts a `subscription_event` (outbox)
//   subscription_dispatcher (background threads, any number of gateway processes)
//               • claims a subscription that has undelivered events with a lease (one process
//                 at a time, no row lock held while sending), sends its events in order as
//                 notification Bundles, advances `delivered_through` only after a 2xx
//               • retries with capped exponential backoff; after N failures in a row the
//                 Subscription resource goes to status `error` (with the reason), and back to
//                 `active` at the next success
//   subscription_websockets: the websocket channel (R4 bind-with-id): a client connects to the
//               server's websocket path, sends `bind <id>`, gets `bound <id>`, then `ping <id>`
//               for each notification, sent by the dispatcher of the process it is connected to
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "yilian/fhir/value.hpp"
#include "yilian/gateway/resource_store.hpp"

namespace yilian::gateway {

class fhir_api;
class websocket_connection;
struct websocket_endpoint;

inline constexpr const char* backport_status_profile =
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription-status-r4";
inline constexpr const char* backport_payload_content_url =
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-payload-content";
inline constexpr const char* backport_heartbeat_period_url =
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-heartbeat-period";

// What the store keeps of a Subscription resource: its criteria split and its channel.
struct subscription_spec {
  std::string status;            // requested | active | error | off
  std::string criteria_type;     // "Observation"
  std::string criteria_query;    // "code=http://loinc.org|1975-2" ('' = every change of the type)
  std::vector<criterion> criteria;  // criteria_query decoded
  std::string channel_type;      // rest-hook | websocket | other (not delivered)
  std::string endpoint;
  std::string payload_mime;      // channel.payload ('' when absent)
  std::string payload_content;   // empty | id-only | full-resource
  std::vector<std::string> headers;  // "Name: value"
  int heartbeat_seconds = 0;
  std::string topic;             // backport topic canonical ('' = report the criteria)

  bool delivered() const { return (channel_type == "rest-hook" || channel_type == "websocket") && status != "off"; }
};

// Reads a Subscription resource. Throws fhir_failure (422, with the element) when a subscription
// that would be delivered cannot be: criteria not "Type?query" over known search parameters, a
// rest-hook without an http(s) endpoint, a header that is not "Name: value" on one line.
subscription_spec parse_subscription(const fhir::value& subscription);

// Splits "a=1&b=x%7Cy" into decoded criteria.
std::vector<criterion> parse_criteria_query(std::string_view query);

// The write participant. Register it with resource_store::add_participant (after the store's
// search indexer, which every store registers first) before any write that should notify.
class subscription_participant : public write_participant {
 public:
  void in_transaction(pqxx::transaction_base& tx, const write_event& event) override;
  void in_transaction_batch(pqxx::transaction_base& tx, const std::vector<write_event>& events) override;
  void after_commit(const write_event& event) noexcept override;

  // Called after each commit that recorded an event, on the committing thread (keep it short, no
  // throwing): dispatchers in this process wake at once instead of at their next poll.
  using listener = std::function<void()>;
  std::uint64_t add_listener(listener l);
  void remove_listener(std::uint64_t id);

 private:
  std::mutex mutex_;
  std::vector<std::pair<std::uint64_t, listener>> listeners_;
  std::uint64_t next_listener_ = 0;
};

struct subscription_dispatcher_options {
  std::string base_url = "http://localhost:8080/fhir";  // public FHIR base, for references in notifications
  std::string owner;                     // lease owner name; empty = hostname:pid:random
  unsigned threads = 2;                  // subscriptions delivered in parallel by this process
  std::chrono::milliseconds poll_interval{200};     // the outbox is checked at least this often
  // When set, the dispatcher LISTENs on its own connection to this database and wakes at every
  // commit that recorded an event in any gateway process (NOTIFY), not only at the next poll.
  std::string listen_database_url;
  std::chrono::milliseconds lease{60'000};           // a crashed process's claims expire after this
  std::chrono::milliseconds retry_min{1'000};        // backoff after the first failure, doubling ...
  std::chrono::milliseconds retry_max{60'000};       // ... up to this
  int failures_before_error = 5;         // consecutive failures that set the resource to `error`
  std::chrono::milliseconds http_timeout{10'000};
  std::size_t max_events_per_notification = 50;
  std::chrono::seconds retention{7 * 24 * 3600};    // delivered events kept this long for $events
};

// The websocket channel's bindings in this process (tenant "default": websocket clients carry no
// tenant yet).
class subscription_websockets {
 public:
  explicit subscription_websockets(resource_store& store);
  ~subscription_websockets();
  subscription_websockets(const subscription_websockets&) = delete;
  subscription_websockets& operator=(const subscription_websockets&) = delete;

  // The endpoint to register with http_server::add_websocket_endpoint.
  websocket_endpoint endpoint(std::string path);

  // Subscriptions with at least one bound connection.
  std::vector<std::string> bound_ids();
  // Sends `text` to every connection bound to the subscription; returns how many got it.
  std::size_t send(const std::string& sub_id, const std::string& text);

  // Called after each new binding (the dispatcher wakes to activate the subscription).
  std::uint64_t add_bind_listener(std::function<void()> listener);
  void remove_bind_listener(std::uint64_t id);

 private:
  struct impl;
  std::shared_ptr<impl> impl_;
};

// Delivers the outbox. Any number of dispatchers (threads, processes) may share one database.
class subscription_dispatcher {
 public:
  // `participant` (optional) wakes the dispatcher right after a commit in this process.
  subscription_dispatcher(resource_store& store, subscription_dispatcher_options options,
                          std::shared_ptr<subscription_participant> participant = nullptr);
  ~subscription_dispatcher();  // stop()
  subscription_dispatcher(const subscription_dispatcher&) = delete;
  subscription_dispatcher& operator=(const subscription_dispatcher&) = delete;

  // Delivers websocket-channel subscriptions bound in this process too (call before start()).
  void attach_websockets(std::shared_ptr<subscription_websockets> websockets);

  void start();
  // Finishes the notifications being sent (bounded by http_timeout), then joins; leases are
  // released so another process continues at once.
  void stop();

  // One delivery attempt for one due subscription, if any (tests and benchmarks drive it by hand).
  // Returns whether a subscription was claimed.
  bool deliver_once();

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

// Registers Subscription/[id]/$status and Subscription/[id]/$events (backport IG) with the API.
void add_subscription_operations(fhir_api& api, resource_store& store);

}  // namespace yilian::gateway
