// HL7 v2 ingest: one received message in, its FHIR resources committed, its ACK out. Transport
// neutral: the MLLP server calls it for each message (in the order a connection sent them), and so
// do `yilian convert`-style tools and tests.
//
//   parse ── unparseable ──────────────────────────▶ AR (kept as a dead letter)
//     │
//   duplicate of an accepted message (sender + MSH-10)? ──▶ the original ACK again, nothing applied
//     │
//   map to a transaction Bundle ── unsupported type ──▶ AR (dead letter)
//     │                         └─ mapping errors ───▶ AE with ERR segments (dead letter)
//   one PostgreSQL transaction: the Bundle's resources + the message's log row
//     │                         └─ a failing entry ──▶ AE naming it (dead letter)
//   commit ──▶ AA (with ERR warnings, e.g. unmapped local codes)
//
// AA is sent only after the commit; the message row commits with the resources, so a message is
// never applied twice and an ACKed message is never lost. Dead letters keep the raw bytes and can
// be listed and replayed once the cause is fixed (a ConceptMap added, a mapping corrected).
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "yilian/gateway/fhir_api.hpp"
#include "yilian/gateway/resource_store.hpp"
#include "yilian/mappers/hl7v2.hpp"
#include "yilian/mappers/hl7v2_ack.hpp"
#include "yilian/mappers/hl7v2_fhir.hpp"

namespace yilian::adapters {

struct hl7v2_ingest_options {
  std::string tenant = "default";
  mappers::hl7v2::parse_options parsing;
  // Without a translator of its own, local codes are translated with the ConceptMaps stored in
  // the gateway: a map whose group.source is the sender's local system
  // ("urn:yilian:local:<MSH-4>:code:<coding system>") and whose element has the code.
  mappers::hl7v2::mapping_options mapping;
};

struct hl7v2_outcome {
  std::string ack;             // ER7 ACK, without MLLP framing
  std::string ack_code;        // AA, AE, AR
  bool duplicate = false;      // the original ACK of an already accepted message
  std::string message_id;      // the message log row ("" for a duplicate)
  std::string error;           // why AE/AR
};

struct hl7v2_logged_message {
  std::string message_id;
  std::string sender;
  std::string control_id;
  std::string message_type;
  std::string status;          // accepted | error | rejected | replayed
  std::string received_at;     // FHIR instant
  std::string peer;
  std::string error;
  int attempts = 0;
  std::string raw;             // bytes as received
};

class hl7v2_ingest {
 public:
  hl7v2_ingest(gateway::resource_store& store, const gateway::fhir_api& api, hl7v2_ingest_options options = {});

  // Never throws: every failure becomes an AE or AR ACK (a database outage: AE, 207, nothing
  // kept, the sender retries).
  hl7v2_outcome handle(std::string_view raw, std::string_view peer = {});

  // Dead letters (status error or rejected), newest first.
  std::vector<hl7v2_logged_message> dead_letters(std::size_t limit = 100, std::size_t offset = 0);
  std::optional<hl7v2_logged_message> find(const std::string& message_id);

  // Runs a kept message through the pipeline again; on success its row becomes `replayed` and a
  // new accepted row records the application.
  hl7v2_outcome replay(const std::string& message_id);

  // An ACK for a message the pipeline never saw (too large for the transport, or the transport's
  // handler failed): `code` with one ERR giving `reason`, addressed from whatever MSH `message`
  // starts with. Nothing is kept: the sender decides whether to re-send.
  std::string transport_ack(std::string_view message, mappers::hl7v2::ack_code code, mappers::hl7v2::error_code error,
                            const std::string& reason) const;

  // Registers $hl7v2-messages (GET: dead letters as a Parameters resource; ?id=: one message) and
  // $hl7v2-replay (POST ?id=) on the FHIR API.
  void register_operations(gateway::fhir_api& api);

 private:
  hl7v2_outcome process(std::string_view raw, std::string_view peer, const std::string* replay_of);

  gateway::resource_store& store_;
  const gateway::fhir_api& api_;
  hl7v2_ingest_options options_;
};

}  // namespace yilian::adapters
