// Order messages: ORM^O01 and OML^O21 -> ServiceRequest per ORC/OBR (+ Specimen from SPM, notes
// from NTE), keyed on the placer order number (else the filler number).
#include <algorithm>
#include <map>

#include "hl7v2_fhir_mapper.hpp"

namespace yilian::mappers::hl7v2::detail {

void mapper::map_service_request(report_context& order) {
  const segment& obr = *order.obr.seg;
  const segment* orc = order.orc ? order.orc->seg : nullptr;
  fhir::value request = fhir::value::make_object();
  request.set("resourceType", str("ServiceRequest"));
  for (const auto& identifier : order.identifiers) append(request, "identifier", identifier);

  // ORC-5 order status (table 0038) when sent, else ORC-1 order control (table 0119).
  static const std::map<std::string, std::string, std::less<>> by_status = {
      {"A", "active"},   {"IP", "active"},  {"SC", "active"},           {"CM", "completed"}, {"CA", "revoked"},
      {"DC", "revoked"}, {"HD", "on-hold"}, {"ER", "entered-in-error"}, {"RP", "active"}};
  static const std::map<std::string, std::string, std::less<>> by_control = {
      {"NW", "active"},  {"XO", "active"},  {"RP", "active"},  {"SC", "active"},  {"SN", "active"},
      {"CA", "revoked"}, {"OC", "revoked"}, {"DC", "revoked"}, {"OD", "revoked"}, {"CR", "revoked"},
      {"HD", "on-hold"}, {"OH", "on-hold"}, {"RL", "active"}};
  std::string status = "unknown";
  if (orc) {
    if (auto it = by_status.find(leaf(*orc, 5)); it != by_status.end())
      status = it->second;
    else if (auto it2 = by_control.find(leaf(*orc, 1)); it2 != by_control.end())
      status = it2->second;
  }
  request.set("status", str(status));
  request.set("intent", str("order"));
  if (auto code = codeable_concept(repetition_at(obr, 4), at(order.obr, 4))) {
    request.set("code", std::move(*code));
  } else {
    problem_at(at(order.obr, 4), error_code::required_field_missing, "OBR-4 universal service identifier missing",
               false);
  }
  static const std::map<std::string, std::string, std::less<>> priorities = {
      {"S", "stat"}, {"A", "asap"}, {"R", "routine"}, {"P", "urgent"}, {"C", "urgent"}, {"T", "urgent"}};
  if (auto it = priorities.find(leaf(obr, 5)); it != priorities.end()) request.set("priority", str(it->second));
  if (order.patient) request.set("subject", reference(order.patient->urn));
  if (order.encounter) request.set("encounter", reference(*order.encounter));
  if (auto when = datetime(leaf(obr, 7), at(order.obr, 7))) request.set("occurrenceDateTime", str(*when));
  if (orc)
    if (auto authored = datetime(leaf(*orc, 9), at(*order.orc, 9))) request.set("authoredOn", str(*authored));
  // Ordering provider: ORC-12, else OBR-16.
  const repetition* provider = orc ? repetition_at(*orc, 12) : nullptr;
  location provider_at = orc ? at(*order.orc, 12) : at(order.obr, 16);
  if (!provider || (part(provider, 1).empty() && part(provider, 2).empty())) {
    provider = repetition_at(obr, 16);
    provider_at = at(order.obr, 16);
  }
  std::string display;
  if (auto urn = practitioner(provider, provider_at, &display); urn || !display.empty())
    request.set("requester", reference(urn.value_or(""), display));
  for (const repetition* reason : repetitions(obr, 31))
    if (auto concept_value = codeable_concept(reason, at(order.obr, 31)))
      append(request, "reasonCode", std::move(*concept_value));
  for (const auto& specimen : order.specimens) append(request, "specimen", reference(specimen));
  for (auto& note : order.notes) append(request, "note", std::move(note));

  std::string key = order.identity ? "ServiceRequest|" + order.identity->find("system")->text() + "|" +
                                         order.identity->find("value")->text()
                                   : "ServiceRequest|" + std::to_string(order.obr.occurrence);
  add_entry(key, std::move(request), order.identity, at(order.obr, 2));
}

void mapper::map_orders() {
  std::optional<patient_context> patient;
  std::optional<std::string> encounter;
  std::optional<segment_ref> orc;
  std::optional<report_context> order;
  bool after_observation = false;  // NTE after an OBX belongs to the observation, not the order

  auto flush = [&] {
    if (order) map_service_request(*order);
    order.reset();
  };
  for (const segment_ref& ref : numbered_segments(msg)) {
    const std::string& id = ref.seg->id;
    if (id == "PID") {
      flush();
      patient = map_patient(ref);
      encounter.reset();
    } else if (id == "PV1") {
      if (patient) encounter = map_encounter(ref, *patient, "O01");
    } else if (id == "ORC") {
      flush();
      orc = ref;
    } else if (id == "OBR") {
      flush();
      if (!patient) problem_at(at(ref, 0), error_code::segment_sequence, "OBR without a usable PID before it", false);
      order.emplace();
      order->obr = ref;
      order->orc = orc;
      order->patient = patient;
      order->encounter = encounter;
      const segment& obr = *ref.seg;
      auto placer = identifier_ei(repetition_at(obr, 2), 1, "placer-order", "PLAC");
      if (!placer && orc) placer = identifier_ei(repetition_at(*orc->seg, 2), 1, "placer-order", "PLAC");
      auto filler = identifier_ei(repetition_at(obr, 3), 1, "filler-order", "FILL");
      if (!filler && orc) filler = identifier_ei(repetition_at(*orc->seg, 3), 1, "filler-order", "FILL");
      if (placer) order->identifiers.push_back(*placer);
      if (filler) order->identifiers.push_back(*filler);
      if (placer || filler) {
        const fhir::value& chosen = placer ? *placer : *filler;
        order->identity = fhir::value::make_object();
        order->identity->set("system", *chosen.find("system"));
        order->identity->set("value", *chosen.find("value"));
      }
      after_observation = false;
    } else if (id == "OBX") {
      after_observation = true;
    } else if (id == "NTE" && order && !after_observation) {
      std::string text;
      for (const repetition* r : repetitions(*ref.seg, 3)) text += (text.empty() ? "" : "\n") + part(r, 1);
      if (!text.empty()) {
        fhir::value annotation = fhir::value::make_object();
        annotation.set("text", str(text));
        order->notes.push_back(std::move(annotation));
      }
    } else if (id == "SPM" && order) {
      map_specimen(ref, *order);
    }
  }
  flush();
  if (!msg.find("PID"))
    problem_at(location{"PID", 1, 0, 0, 0, 0}, error_code::segment_sequence, "PID segment missing", false);
  if (!msg.find("OBR"))
    problem_at(location{"OBR", 1, 0, 0, 0, 0}, error_code::segment_sequence,
               "no OBR: only laboratory/radiology orders are mapped", false);
}

}  // namespace yilian::mappers::hl7v2::detail
