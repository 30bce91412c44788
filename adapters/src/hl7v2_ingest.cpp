#include "yilian/adapters/hl7v2_ingest.hpp"

#include <ctime>
#include <iostream>
#include <pqxx/pqxx>

#include "yilian/fhir/issues.hpp"
#include "yilian/fhir/json.hpp"
#include "yilian/gateway/operation.hpp"
#include "yilian/gateway/search.hpp"
#include "yilian/mappers/hl7v2_ack.hpp"

namespace yilian::adapters {
namespace {

namespace v2 = mappers::hl7v2;
using fhir::value;

constexpr int max_attempts = 3;  // a concurrent duplicate or write conflict: look again

// HL7 TS of now in China Standard Time: 20261124130501+0800.
std::string now_hl7() {
  std::time_t t = std::time(nullptr) + 8 * 3600;
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y%m%d%H%M%S+0800", &tm);
  return buf;
}

// MSH-10 of our ACKs: 20 characters (the ST length of versions before 2.5).
std::string ack_control_id() {
  std::string id = gateway::new_resource_id();
  std::string out;
  for (char ch : id)
    if (ch != '-' && out.size() < 20) out += ch;
  return out;
}

std::string to_hex(std::string_view bytes) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char ch : bytes) {
    out += digits[ch >> 4];
    out += digits[ch & 15];
  }
  return out;
}

std::string from_hex(std::string_view hex) {
  auto nibble = [](char ch) { return ch <= '9' ? ch - '0' : ch - 'a' + 10; };
  std::string out;
  out.reserve(hex.size() / 2);
  for (std::size_t i = 0; i + 1 < hex.size(); i += 2)
    out += static_cast<char>(nibble(hex[i]) << 4 | nibble(hex[i + 1]));
  return out;
}

std::string first_error(const std::vector<v2::problem>& problems) {
  for (const auto& p : problems)
    if (!p.is_warning) return p.where.text().empty() ? p.message : p.where.text() + ": " + p.message;
  return {};
}

bool has_error(const std::vector<v2::problem>& problems) {
  for (const auto& p : problems)
    if (!p.is_warning) return true;
  return false;
}

// A failed transaction's OperationOutcome as ERR problems (the FHIR path in the text).
std::vector<v2::problem> problems_of(const gateway::fhir_failure& failure) {
  std::vector<v2::problem> out;
  for (const auto& issue : failure.issues().all()) {
    if (issue.level != fhir::severity::error && issue.level != fhir::severity::fatal) continue;
    v2::problem p;
    p.code = v2::error_code::application_internal_error;
    p.message = issue.location.empty() ? issue.diagnostics : issue.location + ": " + issue.diagnostics;
    out.push_back(std::move(p));
  }
  if (out.empty()) {
    v2::problem p;
    p.message = failure.what();
    out.push_back(std::move(p));
  }
  return out;
}

const char* const select_columns =
    "message_id, sender, control_id, message_type, status, "
    "to_char(received_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"+00:00\"'), peer, coalesce(error, ''), "
    "attempts, encode(raw, 'hex')";

hl7v2_logged_message row_to_message(const pqxx::row& row) {
  hl7v2_logged_message m;
  m.message_id = row[0].c_str();
  m.sender = row[1].c_str();
  m.control_id = row[2].c_str();
  m.message_type = row[3].c_str();
  m.status = row[4].c_str();
  m.received_at = row[5].c_str();
  m.peer = row[6].c_str();
  m.error = row[7].c_str();
  m.attempts = row[8].as<int>();
  m.raw = from_hex(row[9].c_str());
  return m;
}

std::string text_of(const value* v) { return v && v->is_string() ? v->text() : std::string(); }

// The standard coding for a sender's local code from the ConceptMaps stored in the gateway: a map
// whose group.source is the local system (it names the sending facility) and that has an element
// for the code with a target that is not unmatched or disjoint.
std::optional<v2::coding> translate_with_concept_maps(gateway::resource_store& store, const std::string& tenant,
                                                      const v2::local_code& local) {
  gateway::request_context ctx;
  ctx.tenant = tenant;
  gateway::search_query q;
  q.criteria = {{"source-system", local.system}, {"source-code", local.code}};
  q.count = 10;
  q.total = gateway::total_mode::none;
  for (const auto& stored : gateway::run_search(store, ctx, "ConceptMap", q).matches) {
    value map;
    fhir::issue_list ignored;
    if (!fhir::parse_json(stored.json, map, ignored)) continue;
    const value* groups = map.find("group");
    if (!groups || !groups->is_array()) continue;
    for (const auto& group : groups->items()) {
      if (text_of(group.find("source")) != local.system) continue;
      const value* elements = group.find("element");
      if (!elements || !elements->is_array()) continue;
      for (const auto& element : elements->items()) {
        if (text_of(element.find("code")) != local.code) continue;
        const value* targets = element.find("target");
        if (!targets || !targets->is_array()) continue;
        for (const auto& target : targets->items()) {
          std::string equivalence = text_of(target.find("equivalence"));
          if (equivalence == "unmatched" || equivalence == "disjoint" || text_of(target.find("code")).empty()) continue;
          return v2::coding{text_of(group.find("target")), text_of(target.find("code")), text_of(target.find("display"))};
        }
      }
    }
  }
  return std::nullopt;
}

}  // namespace

hl7v2_ingest::hl7v2_ingest(gateway::resource_store& store, const gateway::fhir_api& api, hl7v2_ingest_options options)
    : store_(store), api_(api), options_(std::move(options)) {
  if (!options_.mapping.translate)
    options_.mapping.translate = [this](const v2::local_code& local) {
      return translate_with_concept_maps(store_, options_.tenant, local);
    };
}

hl7v2_outcome hl7v2_ingest::handle(std::string_view raw, std::string_view peer) { return process(raw, peer, nullptr); }

hl7v2_outcome hl7v2_ingest::process(std::string_view raw, std::string_view peer, const std::string* replay_of) {
  hl7v2_outcome out;
  const std::string now = now_hl7();
  v2::parse_result parsed;
  try {
    parsed = v2::parse(raw, options_.parsing);
  } catch (const std::exception& e) {  // the parser reports problems as values; this is a code failure
    v2::problem p;
    p.message = std::string("parser failure: ") + e.what();
    parsed.problems.push_back(std::move(p));
  }
  const v2::message* m = parsed.parsed ? &*parsed.parsed : nullptr;
  std::string sender = m ? m->value("MSH-3") + "^" + m->sending_facility() : std::string();
  std::string control_id = m ? m->control_id() : std::string();
  std::string message_type = m ? m->message_type() + "^" + m->trigger_event() : std::string();
  gateway::request_context ctx;
  ctx.tenant = options_.tenant;

  // Keeps the message as a dead letter; the sender gets `code` with the problems.
  auto dead_letter = [&](v2::ack_code code, const std::vector<v2::problem>& problems) {
    out.ack_code = std::string(v2::to_string(code));
    out.ack = v2::make_ack(m, code, problems, ack_control_id(), now);
    out.error = first_error(problems);
    try {
      auto lease = store_.acquire();
      pqxx::work tx(*lease);
      if (replay_of) {
        tx.exec_params("UPDATE hl7_message SET attempts = attempts + 1, error = $3, ack = $4 "
                       "WHERE tenant = $1 AND message_id = $2",
                       ctx.tenant, *replay_of, out.error, out.ack);
        out.message_id = *replay_of;
      } else {
        out.message_id = gateway::new_resource_id();
        tx.exec_params("INSERT INTO hl7_message (tenant, message_id, sender, control_id, message_type, status, peer, "
                       "raw, ack, error) VALUES ($1, $2, $3, $4, $5, $6, $7, decode($8, 'hex'), $9, $10)",
                       ctx.tenant, out.message_id, sender, control_id, message_type,
                       code == v2::ack_code::AR ? "rejected" : "error", std::string(peer), to_hex(raw), out.ack,
                       out.error);
      }
      tx.commit();
    } catch (const std::exception& e) {
      // Not kept: the sender must not think it was; answer AE so it resends.
      std::cerr << "hl7v2: cannot keep a dead letter from " << sender << " " << control_id << ": " << e.what() << "\n";
      v2::problem p;
      p.message = "The message could not be recorded; send it again";
      out.ack_code = "AE";
      out.ack = v2::make_ack(m, v2::ack_code::AE, {p}, ack_control_id(), now);
    }
    return out;
  };

  if (!m || has_error(parsed.problems)) return dead_letter(v2::ack_code::AR, parsed.problems);

  for (int attempt = 1;; ++attempt) {
    try {
      if (!replay_of) {
        // A duplicate of an accepted message gets the original ACK and is not applied again.
        auto lease = store_.acquire();
        pqxx::nontransaction tx(*lease);
        auto r = tx.exec_params("SELECT ack FROM hl7_message WHERE tenant = $1 AND sender = $2 AND control_id = $3 "
                                "AND status = 'accepted'",
                                ctx.tenant, sender, control_id);
        if (!r.empty()) {
          out.ack = r[0][0].c_str();
          out.ack_code = "AA";
          out.duplicate = true;
          return out;
        }
      }
      v2::mapping_result mapped = v2::map_to_fhir(*m, options_.mapping);
      std::vector<v2::problem> problems = parsed.problems;
      problems.insert(problems.end(), mapped.problems.begin(), mapped.problems.end());
      if (!mapped.supported) return dead_letter(v2::ack_code::AR, problems);
      if (mapped.has_errors()) return dead_letter(v2::ack_code::AE, problems);

      auto unit = store_.begin(ctx);
      gateway::request_context tctx = ctx;
      tctx.transaction = unit.get();
      try {
        api_.process_transaction(tctx, std::move(mapped.bundle));
      } catch (const gateway::fhir_failure& failure) {
        unit.reset();  // roll back before recording the dead letter
        auto failed = problems_of(failure);
        problems.insert(problems.end(), failed.begin(), failed.end());
        return dead_letter(v2::ack_code::AE, problems);
      }
      out.ack_code = "AA";
      out.ack = v2::make_ack(m, v2::ack_code::AA, problems, ack_control_id(), now);
      out.message_id = gateway::new_resource_id();
      store_.execute_in(*unit, [&](pqxx::transaction_base& tx) {
        // Earlier failed attempts of the same message are resolved by this one.
        tx.exec_params("UPDATE hl7_message SET status = 'replayed' WHERE tenant = $1 AND sender = $2 AND "
                       "control_id = $3 AND status IN ('error', 'rejected')",
                       ctx.tenant, sender, control_id);
        if (replay_of)
          tx.exec_params("UPDATE hl7_message SET status = 'replayed' WHERE tenant = $1 AND message_id = $2",
                         ctx.tenant, *replay_of);
        tx.exec_params("INSERT INTO hl7_message (tenant, message_id, sender, control_id, message_type, status, peer, "
                       "raw, ack) VALUES ($1, $2, $3, $4, $5, 'accepted', $6, decode($7, 'hex'), $8)",
                       ctx.tenant, out.message_id, sender, control_id, message_type, std::string(peer), to_hex(raw),
                       out.ack);
      });
      store_.commit(*unit);  // AA only now
      return out;
    } catch (const pqxx::unique_violation&) {
      // A concurrent copy of this message was accepted first (or a write conflict): look again.
      if (attempt >= max_attempts) break;
    } catch (const pqxx::serialization_failure&) {
      if (attempt >= max_attempts) break;
    } catch (const pqxx::deadlock_detected&) {
      if (attempt >= max_attempts) break;
    } catch (const std::exception& e) {
      std::cerr << "hl7v2: " << sender << " " << control_id << ": " << e.what() << "\n";
      break;
    }
  }
  // The database is unusable or keeps conflicting: nothing was applied or kept; the sender retries.
  v2::problem p;
  p.code = v2::error_code::application_internal_error;
  p.message = "Internal error while storing the message; nothing was applied, send it again";
  out.ack_code = "AE";
  out.ack = v2::make_ack(m, v2::ack_code::AE, {p}, ack_control_id(), now);
  out.error = p.message;
  return out;
}

std::string hl7v2_ingest::transport_ack(std::string_view message, v2::ack_code code, v2::error_code error,
                                        const std::string& reason) const {
  auto head = v2::parse(message.substr(0, message.find('\r')), options_.parsing);  // the MSH segment
  v2::problem p;
  p.code = error;
  p.message = reason;
  return v2::make_ack(head.parsed ? &*head.parsed : nullptr, code, {p}, ack_control_id(), now_hl7());
}

std::vector<hl7v2_logged_message> hl7v2_ingest::dead_letters(std::size_t limit, std::size_t offset) {
  auto lease = store_.acquire();
  pqxx::nontransaction tx(*lease);
  std::vector<hl7v2_logged_message> out;
  for (const auto& row : tx.exec_params(std::string("SELECT ") + select_columns +
                                            " FROM hl7_message WHERE tenant = $1 AND status IN ('error', 'rejected') "
                                            "ORDER BY received_at DESC, message_id LIMIT $2 OFFSET $3",
                                        options_.tenant, static_cast<long>(limit), static_cast<long>(offset)))
    out.push_back(row_to_message(row));
  return out;
}

std::optional<hl7v2_logged_message> hl7v2_ingest::find(const std::string& message_id) {
  auto lease = store_.acquire();
  pqxx::nontransaction tx(*lease);
  auto r = tx.exec_params(std::string("SELECT ") + select_columns + " FROM hl7_message WHERE tenant = $1 AND message_id = $2",
                          options_.tenant, message_id);
  if (r.empty()) return std::nullopt;
  return row_to_message(r[0]);
}

hl7v2_outcome hl7v2_ingest::replay(const std::string& message_id) {
  auto kept = find(message_id);
  if (!kept) throw gateway::fhir_failure(404, fhir::issue_type::not_found, "No HL7 v2 message " + message_id);
  if (kept->status != "error" && kept->status != "rejected")
    throw gateway::fhir_failure(409, fhir::issue_type::conflict,
                                "Message " + message_id + " is " + kept->status + ", not a dead letter");
  return process(kept->raw, kept->peer, &message_id);
}

void hl7v2_ingest::register_operations(gateway::fhir_api& api) {
  auto part = [](const char* name, const char* type, std::string text) {
    value p = value::make_object();
    p.set("name", value::make_string(name));
    p.set(type, type == std::string("valueInteger") ? value::make_number(text) : value::make_string(std::move(text)));
    return p;
  };
  auto describe = [part](const hl7v2_logged_message& m) {
    value parameter = value::make_object();
    parameter.set("name", value::make_string("message"));
    value parts = value::make_array();
    parts.push_back(part("id", "valueString", m.message_id));
    parts.push_back(part("sender", "valueString", m.sender));
    parts.push_back(part("controlId", "valueString", m.control_id.empty() ? "(none)" : m.control_id));
    parts.push_back(part("type", "valueString", m.message_type.empty() ? "(unparsed)" : m.message_type));
    parts.push_back(part("status", "valueCode", m.status));
    parts.push_back(part("received", "valueInstant", m.received_at));
    if (!m.error.empty()) parts.push_back(part("error", "valueString", m.error));
    parts.push_back(part("attempts", "valueInteger", std::to_string(m.attempts)));
    if (!m.peer.empty()) parts.push_back(part("peer", "valueString", m.peer));
    parameter.set("part", std::move(parts));
    return parameter;
  };
  auto parameters = [] {
    value p = value::make_object();
    p.set("resourceType", value::make_string("Parameters"));
    return p;
  };
  api.add_operation(
      {.name = "hl7v2-messages",
       .level = gateway::operation_level::system,
       .methods = {"GET"},
       .definition_url = "urn:yilian:OperationDefinition/hl7v2-messages",
       .handler = [this, describe, parameters](const gateway::operation_call& call) {
         gateway::operation_response res;
         value out = parameters();
         value list = value::make_array();
         if (const std::string* id = call.param("id")) {
           auto m = find(*id);
           if (!m) throw gateway::fhir_failure(404, fhir::issue_type::not_found, "No HL7 v2 message " + *id, "id");
           list.push_back(describe(*m));
         } else {
           std::size_t count = 100;
           if (const std::string* c = call.param("_count")) count = std::min<std::size_t>(std::stoul(*c), 1000);
           for (const auto& m : dead_letters(count)) list.push_back(describe(m));
         }
         if (!list.items().empty()) out.set("parameter", std::move(list));
         res.resource = std::move(out);
         return res;
       }});
  api.add_operation({.name = "hl7v2-replay",
                     .level = gateway::operation_level::system,
                     .methods = {"POST"},
                     .definition_url = "urn:yilian:OperationDefinition/hl7v2-replay",
                     .handler = [this, part, parameters](const gateway::operation_call& call) {
                       const std::string* id = call.param("id");
                       if (!id)
                         throw gateway::fhir_failure(400, fhir::issue_type::required, "$hl7v2-replay needs ?id=", "id");
                       hl7v2_outcome o = replay(*id);
                       value out = parameters();
                       value list = value::make_array();
                       list.push_back(part("ackCode", "valueCode", o.ack_code));
                       list.push_back(part("ack", "valueString", o.ack));
                       if (!o.error.empty()) list.push_back(part("error", "valueString", o.error));
                       out.set("parameter", std::move(list));
                       gateway::operation_response res;
                       res.resource = std::move(out);
                       return res;
                     }});
}

}  // namespace yilian::adapters
