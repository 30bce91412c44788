// SIU^S12-S15 -> Appointment (SCH, TQ1, AIP, AIL, NTE) and MDM^T02 -> DocumentReference (TXA with
// the document's OBX content).
#include <map>

#include "hl7v2_fhir_mapper.hpp"
#include "yilian/fhir/validator.hpp"

namespace yilian::mappers::hl7v2::detail {

void mapper::map_schedule(const std::string& event) {
  std::optional<patient_context> patient;
  std::optional<segment_ref> sch, tq1;
  std::vector<segment_ref> staff, rooms, notes;
  bool in_resources = false;
  for (const segment_ref& ref : numbered_segments(msg)) {
    const std::string& id = ref.seg->id;
    if (id == "SCH")
      sch = ref;
    else if (id == "TQ1" && !tq1)
      tq1 = ref;
    else if (id == "PID" && !patient)
      patient = map_patient(ref);
    else if (id == "RGS")
      in_resources = true;
    else if (id == "AIP")
      staff.push_back(ref);
    else if (id == "AIL")
      rooms.push_back(ref);
    else if (id == "NTE" && !in_resources && sch)
      notes.push_back(ref);
  }
  if (!sch) {
    problem_at(location{"SCH", 1, 0, 0, 0, 0}, error_code::segment_sequence, "SCH segment missing", false);
    return;
  }
  if (!patient) {
    problem_at(location{"PID", 1, 0, 0, 0, 0}, error_code::segment_sequence, "PID segment missing", false);
    return;
  }
  const segment& s = *sch->seg;
  fhir::value appointment = fhir::value::make_object();
  appointment.set("resourceType", str("Appointment"));
  auto placer = identifier_ei(repetition_at(s, 1), 1, "placer-appointment", "PLAC");
  auto filler = identifier_ei(repetition_at(s, 2), 1, "filler-appointment", "FILL");
  if (placer) append(appointment, "identifier", *placer);
  if (filler) append(appointment, "identifier", *filler);
  std::optional<fhir::value> identity;
  if (filler || placer) {
    const fhir::value& chosen = filler ? *filler : *placer;
    identity = fhir::value::make_object();
    identity->set("system", *chosen.find("system"));
    identity->set("value", *chosen.find("value"));
  }

  // SCH-25 filler status (table 0278) when sent, else the event.
  static const std::map<std::string, std::string, std::less<>> statuses = {
      {"Booked", "booked"},   {"Cancelled", "cancelled"}, {"Complete", "fulfilled"},       {"Noshow", "noshow"},
      {"Pending", "pending"}, {"Waitlist", "waitlist"},   {"Deleted", "entered-in-error"}, {"Started", "arrived"}};
  std::string status = event == "S15" ? "cancelled" : "booked";
  if (auto it = statuses.find(leaf(s, 25)); it != statuses.end()) status = it->second;

  // Start and end: TQ1-7/8 (v2.5+), else SCH-11.4/.5 (TQ).
  std::string start_ts = tq1 ? leaf(*tq1->seg, 7) : "", end_ts = tq1 ? leaf(*tq1->seg, 8) : "";
  if (start_ts.empty()) start_ts = leaf(s, 11, 4);
  if (end_ts.empty()) end_ts = leaf(s, 11, 5);
  auto start = datetime(start_ts, tq1 ? at(*tq1, 7) : at(*sch, 11, 4));
  auto end = datetime(end_ts, tq1 ? at(*tq1, 8) : at(*sch, 11, 5));
  bool times = start && end && fhir::is_valid_primitive("instant", *start) && fhir::is_valid_primitive("instant", *end);
  if (!times && status != "cancelled" && status != "waitlist") {
    problem_at(at(*sch, 11), error_code::required_field_missing,
               "no start and end time to the second (TQ1-7/8, SCH-11): Appointment written as proposed", true);
    status = "proposed";
  }
  appointment.set("status", str(status));
  if (event == "S15")
    if (auto reason = codeable_concept(repetition_at(s, 6), at(*sch, 6)))
      appointment.set("cancelationReason", std::move(*reason));
  if (auto type = codeable_concept(repetition_at(s, 8), at(*sch, 8)))
    appointment.set("appointmentType", std::move(*type));
  if (auto reason = codeable_concept(repetition_at(s, 7), at(*sch, 7)))
    append(appointment, "reasonCode", std::move(*reason));
  if (times) {
    appointment.set("start", str(*start));
    appointment.set("end", str(*end));
  }
  std::string comment;
  for (const segment_ref& nte : notes)
    for (const repetition* r : repetitions(*nte.seg, 3)) comment += (comment.empty() ? "" : "\n") + part(r, 1);
  set_text(appointment, "comment", comment);

  auto participant = [&](const std::string& urn, const std::string& display) {
    fhir::value p = fhir::value::make_object();
    p.set("actor", reference(urn, display));
    p.set("required", str("required"));
    p.set("status", str(status == "cancelled" ? "declined" : "accepted"));
    append(appointment, "participant", std::move(p));
  };
  participant(patient->urn, "");
  for (const segment_ref& aip : staff) {
    std::string display;
    if (auto urn = practitioner(repetition_at(*aip.seg, 3), at(aip, 3), &display); urn || !display.empty())
      participant(urn.value_or(""), display);
  }
  for (const segment_ref& ail : rooms) {
    auto chain = map_locations(repetition_at(*ail.seg, 3), at(ail, 3));
    if (!chain.empty()) participant(chain.back(), "");
  }
  std::string key = identity ? "Appointment|" + identity->find("system")->text() + "|" + identity->find("value")->text()
                             : "Appointment|" + std::to_string(sch->occurrence);
  add_entry(key, std::move(appointment), identity, at(*sch, 2));
}

void mapper::map_document() {
  std::optional<patient_context> patient;
  std::optional<std::string> encounter;
  std::optional<segment_ref> txa;
  std::vector<segment_ref> content;
  for (const segment_ref& ref : numbered_segments(msg)) {
    const std::string& id = ref.seg->id;
    if (id == "PID" && !patient)
      patient = map_patient(ref);
    else if (id == "PV1" && patient && !encounter)
      encounter = map_encounter(ref, *patient, "T02");
    else if (id == "TXA")
      txa = ref;
    else if (id == "OBX" && txa)
      content.push_back(ref);
  }
  if (!txa || !patient) {
    problem_at(location{txa ? "PID" : "TXA", 1, 0, 0, 0, 0}, error_code::segment_sequence,
               txa ? "PID segment missing" : "TXA segment missing", false);
    return;
  }
  const segment& s = *txa->seg;
  fhir::value document = fhir::value::make_object();
  document.set("resourceType", str("DocumentReference"));
  // TXA-12 unique document number is the document's identity.
  auto unique = identifier_ei(repetition_at(s, 12), 1, "document-number");
  if (unique) document.set("masterIdentifier", *unique);
  static const std::map<std::string, std::string, std::less<>> doc_statuses = {
      {"AU", "final"},       {"DO", "final"},       {"LA", "final"},      {"DI", "preliminary"},
      {"IN", "preliminary"}, {"IP", "preliminary"}, {"PA", "preliminary"}};
  document.set("status", str("current"));
  if (auto it = doc_statuses.find(leaf(s, 17)); it != doc_statuses.end()) document.set("docStatus", str(it->second));
  if (std::string type = leaf(s, 2); !type.empty())
    document.set("type", table_concept("http://terminology.hl7.org/CodeSystem/v2-0270", type));
  document.set("subject", reference(patient->urn));
  std::string when_ts = leaf(s, 4).empty() ? leaf(s, 6) : leaf(s, 4);
  if (auto when = datetime(when_ts, at(*txa, 4)); when && fhir::is_valid_primitive("instant", *when))
    document.set("date", str(*when));
  for (const repetition* xcn : repetitions(s, 9)) {
    std::string display;
    if (auto urn = practitioner(xcn, at(*txa, 9), &display); urn || !display.empty())
      append(document, "author", reference(urn.value_or(""), display));
  }
  if (const repetition* ppn = repetition_at(s, 22)) {
    std::string display;
    if (auto urn = practitioner(ppn, at(*txa, 22), &display); urn || !display.empty())
      document.set("authenticator", reference(urn.value_or(""), display));
  }

  // Text lines (TX/ST/FT) become one text/plain attachment; each ED its own attachment.
  std::string text;
  for (const segment_ref& obx : content) {
    const segment& o = *obx.seg;
    std::string type = leaf(o, 2);
    if (type == "TX" || type == "ST" || type == "FT") {
      for (const repetition* r : repetitions(o, 5)) text += (text.empty() ? "" : "\n") + part(r, 1);
    } else if (type == "ED" || type == "RP") {
      fhir::value scratch = fhir::value::make_object();
      report_context unused;
      if (auto attachment = observation_value(obx, scratch, unused)) {
        fhir::value c = fhir::value::make_object();
        c.set("attachment", std::move(*attachment));
        append(document, "content", std::move(c));
      }
    }
  }
  if (!text.empty()) {
    fhir::value attachment = fhir::value::make_object();
    attachment.set("contentType", str("text/plain; charset=utf-8"));
    attachment.set("data", str(base64_of(text)));
    fhir::value c = fhir::value::make_object();
    c.set("attachment", std::move(attachment));
    append(document, "content", std::move(c));
  }
  if (!document.find("content")) {
    problem_at(at(*txa, 0), error_code::required_field_missing, "MDM^T02 without document content (OBX)", false);
    return;
  }
  if (encounter) {
    fhir::value context = fhir::value::make_object();
    fhir::value encounters = fhir::value::make_array();
    encounters.push_back(reference(*encounter));
    context.set("encounter", std::move(encounters));
    document.set("context", std::move(context));
  }
  std::optional<fhir::value> identity;
  if (unique) identity = *unique;  // the identifier search parameter covers masterIdentifier
  std::string key =
      identity ? "DocumentReference|" + identity->find("system")->text() + "|" + identity->find("value")->text()
               : "DocumentReference|" + std::to_string(txa->occurrence);
  add_entry(key, std::move(document), identity, at(*txa, 12));
}

}  // namespace yilian::mappers::hl7v2::detail
