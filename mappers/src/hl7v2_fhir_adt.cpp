// ADT segment maps: PID -> Patient, PV1 -> Encounter (+ Location chain, Practitioners), NK1 ->
// RelatedPerson, IN1 -> Coverage (+ payor Organization), MRG -> Patient link (A40).
#include <map>

#include "hl7v2_fhir_mapper.hpp"
#include "yilian/profiles/alliance.hpp"

namespace yilian::mappers::hl7v2::detail {

std::optional<mapper::patient_context> mapper::map_patient(const segment_ref& pid) {
  const segment& s = *pid.seg;
  fhir::value patient = fhir::value::make_object();
  patient.set("resourceType", str("Patient"));

  // PID-3 identifiers (and PID-2, PID-4 of older versions, PID-19 where Chinese HIS put the 身份证号).
  std::optional<fhir::value> national_id, first_with_system;
  std::vector<std::string> seen_values;
  auto add_identifier = [&](const repetition* cx, int field, std::size_t index) {
    location where = at(pid, field);
    where.repetition = static_cast<int>(index + 1);
    auto identifier = identifier_cx(cx, "patient-id", where);
    if (!identifier) return;
    std::string key = identifier->find("system")->text() + "|" + identifier->find("value")->text();
    for (const auto& v : seen_values)
      if (v == key) return;
    seen_values.push_back(key);
    if (identifier->find("system")->text() == profiles::identifier_system::national_id) {
      if (!national_id) national_id = *identifier;
    } else if (!first_with_system && field == 3) {
      first_with_system = *identifier;
    }
    append(patient, "identifier", std::move(*identifier));
  };
  auto ids = repetitions(s, 3);
  for (std::size_t i = 0; i < ids.size(); ++i) add_identifier(ids[i], 3, i);
  for (int field : {2, 4}) {
    auto more = repetitions(s, field);
    for (std::size_t i = 0; i < more.size(); ++i) add_identifier(more[i], field, i);
  }
  if (std::string ssn = leaf(s, 19); ssn.size() == 18 && profiles::parse_national_id(ssn)) {
    repetition r;
    r.components.push_back(component{{ssn}});
    add_identifier(&r, 19, 0);
  }
  if (!patient.find("identifier")) {
    problem_at(at(pid, 3), error_code::required_field_missing, "PID-3 has no patient identifier", false);
    return std::nullopt;
  }

  for (const repetition* xpn : repetitions(s, 5))
    if (auto name = human_name(xpn)) append(patient, "name", std::move(*name));
  for (const repetition* xtn : repetitions(s, 13))
    if (auto cp = contact_point(xtn, "home")) append(patient, "telecom", std::move(*cp));
  for (const repetition* xtn : repetitions(s, 14))
    if (auto cp = contact_point(xtn, "work")) append(patient, "telecom", std::move(*cp));
  if (auto g = gender(leaf(s, 8), at(pid, 8))) patient.set("gender", str(*g));
  if (auto birth = date(leaf(s, 7), at(pid, 7))) patient.set("birthDate", str(*birth));
  if (std::string deceased = leaf(s, 30); deceased == "Y" || !leaf(s, 29).empty()) {
    if (auto when = datetime(leaf(s, 29), at(pid, 29)))
      patient.set("deceasedDateTime", str(*when));
    else
      patient.set("deceasedBoolean", fhir::value::make_boolean(true));
  } else if (deceased == "N") {
    patient.set("deceasedBoolean", fhir::value::make_boolean(false));
  }
  for (const repetition* xad : repetitions(s, 11))
    if (auto a = address(xad)) append(patient, "address", std::move(*a));
  if (const repetition* marital = repetition_at(s, 16)) {
    std::string code = part(marital, 1);
    static const std::map<std::string, std::string, std::less<>> v3 = {
        {"M", "M"}, {"S", "S"}, {"D", "D"}, {"W", "W"}, {"A", "L"}, {"E", "L"},  {"C", "C"},
        {"P", "P"}, {"T", "T"}, {"I", "I"}, {"N", "A"}, {"B", "U"}, {"U", "UNK"}};
    std::string v2_system = part(marital, 3);
    if (auto it = v3.find(code); it != v3.end() && (v2_system.empty() || v2_system == "HL70002")) {
      fhir::value concept_value =
          table_concept(it->second == "UNK" ? "http://terminology.hl7.org/CodeSystem/v3-NullFlavor"
                                            : "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus",
                        it->second, part(marital, 2));
      patient.set("maritalStatus", std::move(concept_value));
    } else if (auto concept_value = codeable_concept(marital, at(pid, 16))) {
      patient.set("maritalStatus", std::move(*concept_value));
    }
  }

  std::optional<fhir::value> identity = national_id ? national_id : first_with_system;
  if (!identity) identity = patient.find("identifier")->items().front();
  std::string key = "Patient|" + identity->find("system")->text() + "|" + identity->find("value")->text();
  std::string urn = add_entry(key, std::move(patient), identity, at(pid, 3));
  return patient_context{urn, identity};
}

std::vector<std::string> mapper::map_locations(const repetition* pl, const location& where) {
  // PL: point of care ^ room ^ bed ^ facility ^ status ^ type ^ building ^ floor. A chain of
  // Locations, each partOf the previous, most specific last; identity is the path within the facility.
  std::vector<std::string> urns;
  if (!pl) return urns;
  // The facility PL-4 names owns the identity (HIS and LIS name the same bed), else the sender.
  std::string owner = part(pl, 4, 1).empty() ? facility : part(pl, 4, 1);
  std::string system = "urn:yilian:local:" + percent_encode(owner) + ":location";
  std::string path;
  std::optional<std::string> parent;
  struct level {
    int component;
    const char* physical_type;
    const char* display;
  };
  for (level l : {level{1, "wa", "Ward"}, level{2, "ro", "Room"}, level{3, "bd", "Bed"}}) {
    std::string name = part(pl, l.component, 1);
    if (name.empty()) continue;
    path += (path.empty() ? "" : "/") + name;
    fhir::value identifier = fhir::value::make_object();
    identifier.set("system", str(system));
    identifier.set("value", str(path));
    fhir::value resource = fhir::value::make_object();
    resource.set("resourceType", str("Location"));
    append(resource, "identifier", identifier);
    resource.set("name", str(name));
    resource.set("mode", str("instance"));
    resource.set("physicalType", table_concept("http://terminology.hl7.org/CodeSystem/location-physical-type",
                                               l.physical_type, l.display));
    if (parent) resource.set("partOf", reference(*parent));
    std::string urn = add_entry("Location|" + system + "|" + path, std::move(resource), identifier, where);
    urns.push_back(urn);
    parent = urn;
  }
  return urns;
}

std::optional<std::string> mapper::map_encounter(const segment_ref& pv1, const patient_context& patient,
                                                 const std::string& event) {
  const segment& s = *pv1.seg;
  std::string patient_class = leaf(s, 2);
  const repetition* visit = repetition_at(s, 19);
  if (part(visit, 1).empty() && (patient_class.empty() || patient_class == "N")) return std::nullopt;

  fhir::value encounter = fhir::value::make_object();
  encounter.set("resourceType", str("Encounter"));
  std::optional<fhir::value> identity;
  if (visit) {
    identity = identifier_cx(visit, "visit-number", at(pv1, 19));
    if (identity && !identity->find("type")) {
      fhir::value with_type = fhir::value::make_object();
      with_type.set("type", table_concept("http://terminology.hl7.org/CodeSystem/v2-0203", "VN"));
      for (auto& m : identity->members()) with_type.set(m.name, m.val);
      identity = std::move(with_type);
    }
  }
  if (identity) append(encounter, "identifier", *identity);

  // Status from the event; A08 and others from the admit/discharge times.
  std::string admit = leaf(s, 44), discharge = leaf(s, 45);
  std::string status;
  if (event == "A03")
    status = "finished";
  else if (event == "A11")
    status = "cancelled";
  else if (event == "A05" || event == "A14")
    status = "planned";
  else if (event == "A01" || event == "A02" || event == "A04" || event == "A13")
    status = "in-progress";
  else
    status = !discharge.empty() ? "finished" : !admit.empty() ? "in-progress" : "unknown";
  encounter.set("status", str(status));

  static const std::map<std::string, std::pair<std::string, std::string>, std::less<>> classes = {
      {"E", {"EMER", "emergency"}},      {"I", {"IMP", "inpatient encounter"}}, {"O", {"AMB", "ambulatory"}},
      {"P", {"PRENC", "pre-admission"}}, {"R", {"AMB", "ambulatory"}},          {"B", {"IMP", "inpatient encounter"}},
      {"C", {"AMB", "ambulatory"}}};
  fhir::value encounter_class = fhir::value::make_object();
  if (auto it = classes.find(patient_class); it != classes.end()) {
    encounter_class.set("system", str("http://terminology.hl7.org/CodeSystem/v3-ActCode"));
    encounter_class.set("code", str(it->second.first));
    encounter_class.set("display", str(it->second.second));
  } else {
    if (!patient_class.empty())
      problem_at(at(pv1, 2), error_code::table_value_not_found,
                 "patient class '" + patient_class + "' is not in table 0004", true);
    encounter_class.set("system", str("http://terminology.hl7.org/CodeSystem/v3-NullFlavor"));
    encounter_class.set("code", str("UNK"));
  }
  encounter.set("class", std::move(encounter_class));
  if (auto service = codeable_concept(repetition_at(s, 10), at(pv1, 10)))
    encounter.set("serviceType", std::move(*service));
  encounter.set("subject", reference(patient.urn));

  struct role {
    int field;
    const char* code;
    const char* display;
  };
  for (role r : {role{7, "ATND", "attender"}, role{8, "REF", "referrer"}, role{9, "CON", "consultant"},
                 role{17, "ADM", "admitter"}}) {
    auto people = repetitions(s, r.field);
    for (const repetition* xcn : people) {
      std::string display;
      auto urn = practitioner(xcn, at(pv1, r.field), &display);
      if (!urn && display.empty()) continue;
      fhir::value participant = fhir::value::make_object();
      fhir::value type = table_concept("http://terminology.hl7.org/CodeSystem/v3-ParticipationType", r.code, r.display);
      fhir::value types = fhir::value::make_array();
      types.push_back(std::move(type));
      participant.set("type", std::move(types));
      participant.set("individual", reference(urn.value_or(""), display));
      append(encounter, "participant", std::move(participant));
    }
  }

  fhir::value period = fhir::value::make_object();
  if (auto start = datetime(admit, at(pv1, 44))) period.set("start", str(*start));
  if (auto end = datetime(discharge, at(pv1, 45))) period.set("end", str(*end));
  if (!period.members().empty()) encounter.set("period", std::move(period));

  auto current = map_locations(repetition_at(s, 3), at(pv1, 3));
  for (auto it = current.rbegin(); it != current.rend(); ++it) {
    fhir::value entry = fhir::value::make_object();
    entry.set("location", reference(*it));
    entry.set("status", str(status == "finished" ? "completed" : status == "planned" ? "planned" : "active"));
    append(encounter, "location", std::move(entry));
  }
  auto prior = map_locations(repetition_at(s, 6), at(pv1, 6));
  if (!prior.empty()) {
    fhir::value entry = fhir::value::make_object();
    entry.set("location", reference(prior.back()));
    entry.set("status", str("completed"));
    append(encounter, "location", std::move(entry));
  }

  std::string key = identity ? "Encounter|" + identity->find("system")->text() + "|" + identity->find("value")->text()
                             : "Encounter|" + std::to_string(pv1.occurrence);
  return add_entry(key, std::move(encounter), identity, at(pv1, 19));
}

void mapper::map_next_of_kin(const segment_ref& nk1, const patient_context& patient) {
  const segment& s = *nk1.seg;
  fhir::value person = fhir::value::make_object();
  person.set("resourceType", str("RelatedPerson"));
  // NK1 has no identifier of its own in practice: the patient's identity plus NK1-1 keys it, so a
  // replayed message updates the same RelatedPerson.
  std::string set_id = leaf(s, 1).empty() ? std::to_string(nk1.occurrence) : leaf(s, 1);
  fhir::value identity = fhir::value::make_object();
  identity.set("system", str(local_system("next-of-kin")));
  identity.set("value", str(patient.identity->find("value")->text() + "/" + set_id));
  append(person, "identifier", identity);
  person.set("active", fhir::value::make_boolean(true));
  person.set("patient", reference(patient.urn));
  if (const repetition* relation = repetition_at(s, 3)) {
    static const std::map<std::string, std::string, std::less<>> v3 = {
        {"SPO", "SPS"}, {"CHD", "CHILD"}, {"MTH", "MTH"},   {"FTH", "FTH"},  {"PAR", "PRN"},     {"SIB", "SIB"},
        {"BRO", "BRO"}, {"SIS", "SIS"},   {"GRD", "GUARD"}, {"FND", "FRND"}, {"DOM", "DOMPART"}, {"SEL", "ONESELF"}};
    fhir::value concept_value = fhir::value::make_object();
    if (auto it = v3.find(part(relation, 1)); it != v3.end()) {
      fhir::value c = fhir::value::make_object();
      c.set("system", str("http://terminology.hl7.org/CodeSystem/v3-RoleCode"));
      c.set("code", str(it->second));
      append(concept_value, "coding", std::move(c));
      fhir::value original = fhir::value::make_object();
      original.set("system", str("http://terminology.hl7.org/CodeSystem/v2-0063"));
      original.set("code", str(part(relation, 1)));
      set_text(original, "display", part(relation, 2));
      append(concept_value, "coding", std::move(original));
    } else if (auto coded = codeable_concept(relation, at(nk1, 3))) {
      concept_value = std::move(*coded);
    }
    if (!concept_value.members().empty()) append(person, "relationship", std::move(concept_value));
  }
  for (const repetition* xpn : repetitions(s, 2))
    if (auto name = human_name(xpn)) append(person, "name", std::move(*name));
  for (const repetition* xtn : repetitions(s, 5))
    if (auto cp = contact_point(xtn, "home")) append(person, "telecom", std::move(*cp));
  for (const repetition* xtn : repetitions(s, 6))
    if (auto cp = contact_point(xtn, "work")) append(person, "telecom", std::move(*cp));
  if (auto g = gender(leaf(s, 15), at(nk1, 15))) person.set("gender", str(*g));
  if (auto birth = date(leaf(s, 16), at(nk1, 16))) person.set("birthDate", str(*birth));
  for (const repetition* xad : repetitions(s, 4))
    if (auto a = address(xad)) append(person, "address", std::move(*a));
  add_entry("RelatedPerson|" + identity.find("value")->text(), std::move(person), identity, at(nk1, 1));
}

void mapper::map_coverage(const segment_ref& in1, const patient_context& patient) {
  const segment& s = *in1.seg;
  fhir::value coverage = fhir::value::make_object();
  coverage.set("resourceType", str("Coverage"));
  std::optional<fhir::value> identity;
  if (std::string policy = leaf(s, 36); !policy.empty()) {
    identity = fhir::value::make_object();
    std::string company = leaf(s, 3);
    identity->set("system", str(local_system(company.empty() ? "policy-number" : "policy-number:" + company)));
    identity->set("value", str(policy));
    append(coverage, "identifier", *identity);
  }
  coverage.set("status", str("active"));
  if (auto plan_type = codeable_concept(repetition_at(s, 15), at(in1, 15))) coverage.set("type", std::move(*plan_type));
  coverage.set("beneficiary", reference(patient.urn));
  fhir::value period = fhir::value::make_object();
  if (auto start = date(leaf(s, 12), at(in1, 12))) period.set("start", str(*start));
  if (auto end = date(leaf(s, 13), at(in1, 13))) period.set("end", str(*end));
  if (!period.members().empty()) coverage.set("period", std::move(period));

  // The insurer: IN1-3 company id, IN1-4 name.
  std::optional<std::string> payor;
  if (const repetition* company_id = repetition_at(s, 3); !part(company_id, 1).empty()) {
    auto identifier = identifier_cx(company_id, "insurer", at(in1, 3));
    fhir::value org = fhir::value::make_object();
    org.set("resourceType", str("Organization"));
    append(org, "identifier", *identifier);
    org.set("active", fhir::value::make_boolean(true));
    set_text(org, "name", leaf(s, 4));
    payor = add_entry("Organization|" + identifier->find("system")->text() + "|" + identifier->find("value")->text(),
                      std::move(org), identifier, at(in1, 3));
  } else {
    repetition name_only;
    name_only.components.push_back(component{{leaf(s, 4)}});
    payor = organization(&name_only, at(in1, 4));
  }
  if (!payor) {
    problem_at(at(in1, 3), error_code::required_field_missing, "IN1-3/IN1-4: no insurance company, Coverage skipped",
               true);
    return;
  }
  append(coverage, "payor", reference(*payor, leaf(s, 4)));
  std::string key =
      identity ? "Coverage|" + identity->find("value")->text() : "Coverage|" + std::to_string(in1.occurrence);
  add_entry(key, std::move(coverage), identity, at(in1, 36));
}

void mapper::map_merge(const segment_ref& mrg, const patient_context& survivor) {
  const segment& s = *mrg.seg;
  fhir::value merged = fhir::value::make_object();
  merged.set("resourceType", str("Patient"));
  std::optional<fhir::value> identity;
  auto ids = repetitions(s, 1);
  for (std::size_t i = 0; i < ids.size(); ++i) {
    location where = at(mrg, 1);
    where.repetition = static_cast<int>(i + 1);
    if (auto identifier = identifier_cx(ids[i], "patient-id", where)) {
      if (!identity) identity = *identifier;
      append(merged, "identifier", std::move(*identifier));
    }
  }
  if (!identity) {
    problem_at(at(mrg, 1), error_code::required_field_missing, "MRG-1 has no prior patient identifier", false);
    return;
  }
  merged.set("active", fhir::value::make_boolean(false));
  for (const repetition* xpn : repetitions(s, 7))
    if (auto name = human_name(xpn)) append(merged, "name", std::move(*name));
  fhir::value link = fhir::value::make_object();
  link.set("other", reference(survivor.urn));
  link.set("type", str("replaced-by"));
  append(merged, "link", std::move(link));
  std::string merged_urn =
      add_entry("Patient|" + identity->find("system")->text() + "|" + identity->find("value")->text(),
                std::move(merged), identity, at(mrg, 1));
  if (fhir::value* patient = entry_resource(survivor.urn)) {
    fhir::value back = fhir::value::make_object();
    back.set("other", reference(merged_urn));
    back.set("type", str("replaces"));
    append(*patient, "link", std::move(back));
  }
}

void mapper::map_adt(const std::string& event) {
  std::optional<patient_context> patient;
  for (const segment_ref& ref : numbered_segments(msg)) {
    const std::string& id = ref.seg->id;
    if (id == "PID") {
      patient = map_patient(ref);
    } else if (!patient) {
      if (id == "PV1" || id == "NK1" || id == "IN1" || id == "MRG")
        problem_at(at(ref, 0), error_code::segment_sequence, id + " before a usable PID", false);
    } else if (id == "PV1") {
      if (event != "A28" && event != "A31" && event != "A40") map_encounter(ref, *patient, event);
    } else if (id == "NK1") {
      map_next_of_kin(ref, *patient);
    } else if (id == "IN1") {
      map_coverage(ref, *patient);
    } else if (id == "MRG" && event == "A40") {
      map_merge(ref, *patient);
    }
  }
  if (!msg.find("PID"))
    problem_at(location{"PID", 1, 0, 0, 0, 0}, error_code::segment_sequence, "PID segment missing", false);
  if (event == "A40" && !msg.find("MRG"))
    problem_at(location{"MRG", 1, 0, 0, 0, 0}, error_code::segment_sequence, "A40 without MRG segment", false);
}

}  // namespace yilian::mappers::hl7v2::detail
