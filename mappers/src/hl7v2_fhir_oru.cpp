// ORU^R01 segment maps: OBR -> DiagnosticReport, OBX -> Observation (ED/RP -> DocumentReference),
// OBX-23 -> performing Organization, SPM / OBR-15 -> Specimen, NTE -> notes.
#include <algorithm>
#include <map>

#include "hl7v2_fhir_mapper.hpp"
#include "yilian/fhir/validator.hpp"

namespace yilian::mappers::hl7v2::detail {

namespace {

std::string trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return std::string(s);
}

// HL7 NM ("+4.50", ".5", "007", "4.") to a FHIR decimal literal; nullopt when not a number.
std::optional<std::string> decimal(std::string_view text) {
  std::string s = trim(text);
  std::string sign;
  if (!s.empty() && (s.front() == '+' || s.front() == '-')) {
    if (s.front() == '-') sign = "-";
    s.erase(0, 1);
  }
  std::size_t dot = s.find('.');
  std::string whole = s.substr(0, dot), fraction = dot == std::string::npos ? "" : s.substr(dot + 1);
  if (whole.empty() && fraction.empty()) return std::nullopt;
  for (char c : whole + fraction)
    if (c < '0' || c > '9') return std::nullopt;
  while (whole.size() > 1 && whole.front() == '0') whole.erase(0, 1);
  if (whole.empty()) whole = "0";
  std::string out = sign + whole + (fraction.empty() ? "" : "." + fraction);
  return out == "-0" ? "0" : out;
}

std::string content_type(const std::string& type, const std::string& subtype) {
  static const std::map<std::string, std::string, std::less<>> subtypes = {
      {"PDF", "application/pdf"}, {"JPEG", "image/jpeg"},        {"JPG", "image/jpeg"},      {"PNG", "image/png"},
      {"GIF", "image/gif"},       {"TIFF", "image/tiff"},        {"RTF", "application/rtf"}, {"HTML", "text/html"},
      {"XML", "application/xml"}, {"DICOM", "application/dicom"}};
  std::string upper;
  for (char c : subtype) upper += static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  if (auto it = subtypes.find(upper); it != subtypes.end()) return it->second;
  if (subtype.find('/') != std::string::npos) return subtype;
  if (type == "TEXT" || type == "TX") return "text/plain";
  return "application/octet-stream";
}

}  // namespace

std::string base64_of(std::string_view bytes) {
  static const char* table = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  std::size_t i = 0;
  for (; i + 2 < bytes.size(); i += 3) {
    unsigned n = (static_cast<unsigned char>(bytes[i]) << 16) | (static_cast<unsigned char>(bytes[i + 1]) << 8) |
                 static_cast<unsigned char>(bytes[i + 2]);
    out += table[(n >> 18) & 63];
    out += table[(n >> 12) & 63];
    out += table[(n >> 6) & 63];
    out += table[n & 63];
  }
  if (i < bytes.size()) {
    unsigned n = static_cast<unsigned char>(bytes[i]) << 16;
    if (i + 1 < bytes.size()) n |= static_cast<unsigned char>(bytes[i + 1]) << 8;
    out += table[(n >> 18) & 63];
    out += table[(n >> 12) & 63];
    out += i + 1 < bytes.size() ? table[(n >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

std::optional<fhir::value> mapper::observation_value(const segment_ref& obx, fhir::value& observation,
                                                     report_context& report) {
  const segment& s = *obx.seg;
  std::string type = leaf(s, 2);
  auto values = repetitions(s, 5);
  if (values.empty()) return std::nullopt;
  location where = at(obx, 5);
  const repetition* first = values.front();
  if (values.size() > 1 && type != "ST" && type != "TX" && type != "FT")
    problem_at(where, error_code::data_type, "OBX-5 repeats for type " + type + ": only the first value is mapped",
               true);

  const repetition* unit_field = repetition_at(s, 6);
  auto quantity = [&](const std::string& number) {
    fhir::value q = fhir::value::make_object();
    q.set("value", fhir::value::make_number(number));
    std::string unit_code = part(unit_field, 1), unit_text = part(unit_field, 2), unit_system = part(unit_field, 3);
    std::string printed = !unit_code.empty() ? unit_code : unit_text;
    set_text(q, "unit", unit_text.empty() ? unit_code : unit_text);
    std::optional<std::string> ucum =
        unit_system == "UCUM" ? std::optional<std::string>(unit_code) : ucum_unit(printed);
    if (!ucum && !unit_text.empty()) ucum = ucum_unit(unit_text);
    if (ucum) {
      q.set("system", str("http://unitsofmeasure.org"));
      q.set("code", str(*ucum));
    } else if (!printed.empty()) {
      problem_at(at(obx, 6), error_code::table_value_not_found, "unit '" + printed + "' is not a known UCUM unit",
                 true);
    }
    return q;
  };
  auto number_or_error = [&](const std::string& text) -> std::optional<std::string> {
    auto d = decimal(text);
    if (!d) problem_at(where, error_code::data_type, "OBX-5 '" + text + "' is not a number (type " + type + ")", false);
    return d;
  };

  if (type == "NM") {
    auto d = number_or_error(part(first, 1));
    if (d) observation.set("valueQuantity", quantity(*d));
  } else if (type == "ST" || type == "TX" || type == "FT" || type == "ID" || type == "IS") {
    std::string text;
    for (const repetition* r : values) {
      std::string piece;
      for (std::size_t c = 0; c < r->components.size(); ++c) {
        std::string sub = part(r, static_cast<int>(c + 1));
        if (c) piece += '^';
        piece += sub;
      }
      while (!piece.empty() && piece.back() == '^') piece.pop_back();
      if (!text.empty()) text += '\n';
      text += piece;
    }
    if (!text.empty()) observation.set("valueString", str(text));
  } else if (type == "CE" || type == "CWE" || type == "CNE" || type == "CF") {
    if (auto concept_value = codeable_concept(first, where))
      observation.set("valueCodeableConcept", std::move(*concept_value));
  } else if (type == "SN") {
    std::string comparator = part(first, 1), n1 = part(first, 2), separator = part(first, 3), n2 = part(first, 4);
    if (separator.empty() && n2.empty()) {
      auto d = number_or_error(n1);
      if (d) {
        fhir::value q = quantity(*d);
        if (comparator == "<" || comparator == ">" || comparator == "<=" || comparator == ">=") {
          fhir::value with = fhir::value::make_object();
          with.set("value", *q.find("value"));
          with.set("comparator", str(comparator));
          for (const auto& m : q.members())
            if (m.name != "value") with.set(m.name, m.val);
          q = std::move(with);
        } else if (!comparator.empty() && comparator != "=") {
          observation.set("valueString", str(comparator + n1));
          return std::nullopt;
        }
        observation.set("valueQuantity", std::move(q));
      }
    } else if (separator == "-" && !n1.empty() && !n2.empty()) {
      auto low = number_or_error(n1), high = number_or_error(n2);
      if (low && high) {
        fhir::value range = fhir::value::make_object();
        range.set("low", quantity(*low));
        range.set("high", quantity(*high));
        observation.set("valueRange", std::move(range));
      }
    } else if ((separator == ":" || separator == "/") && !n1.empty() && !n2.empty()) {
      auto numerator = number_or_error(n1), denominator = number_or_error(n2);
      if (numerator && denominator) {
        fhir::value ratio = fhir::value::make_object();
        fhir::value a = fhir::value::make_object(), b = fhir::value::make_object();
        a.set("value", fhir::value::make_number(*numerator));
        b.set("value", fhir::value::make_number(*denominator));
        ratio.set("numerator", std::move(a));
        ratio.set("denominator", std::move(b));
        observation.set("valueRatio", std::move(ratio));
      }
    } else {
      // "2^+" (2+ on a dipstick) and other forms: the text as sent.
      observation.set("valueString", str(comparator + n1 + separator + n2));
    }
  } else if (type == "DT" || type == "TS" || type == "DTM") {
    if (auto when = datetime(part(first, 1), where)) observation.set("valueDateTime", str(*when));
  } else if (type == "TM") {
    std::string t = part(first, 1);
    std::string formatted;
    if (t.size() >= 4)
      formatted = t.substr(0, 2) + ":" + t.substr(2, 2) + ":" + (t.size() >= 6 ? t.substr(4, 2) : "00");
    if (fhir::is_valid_primitive("time", formatted))
      observation.set("valueTime", str(formatted));
    else
      problem_at(where, error_code::data_type, "OBX-5 '" + t + "' is not a time", false);
  } else if (type == "ED" || type == "RP") {
    fhir::value attachment = fhir::value::make_object();
    if (type == "ED") {
      std::string encoding = part(first, 4), data = part(first, 5);
      attachment.set("contentType", str(content_type(part(first, 2), part(first, 3))));
      if (data.empty()) {
        problem_at(where, error_code::required_field_missing, "OBX-5 ED without data", true);
        return std::nullopt;
      }
      if (encoding == "Base64") {
        std::string clean;
        for (char c : data)
          if (c != ' ' && c != '\n' && c != '\r') clean += c;
        attachment.set("data", str(clean));
      } else if (encoding == "Hex") {
        std::string bytes;
        for (std::size_t i = 0; i + 1 < data.size(); i += 2)
          bytes += static_cast<char>(std::stoi(data.substr(i, 2), nullptr, 16));
        attachment.set("data", str(base64_of(bytes)));
      } else {
        attachment.set("data", str(base64_of(data)));
      }
    } else {
      std::string pointer = part(first, 1);
      if (pointer.empty()) return std::nullopt;
      attachment.set("contentType", str(content_type(part(first, 3), part(first, 4))));
      attachment.set("url", str(pointer));
    }
    return attachment;
  } else {
    problem_at(at(obx, 2), error_code::table_value_not_found,
               "OBX-2 value type '" + type + "' is not mapped; kept as text", true);
    observation.set("valueString", str(part(first, 1)));
  }
  (void)report;
  return std::nullopt;
}

void mapper::map_observation(report_context& report, const segment_ref& obx, const std::vector<segment_ref>& notes) {
  const segment& s = *obx.seg;
  if (leaf(s, 3).empty()) {
    bool has_value = false;
    for (const repetition* r : repetitions(s, 5))
      for (int c : {1, 5})
        if (!part(r, c).empty() && (c == 5 || leaf(s, 2) != "ED")) has_value = true;
    problem_at(at(obx, 3), error_code::required_field_missing,
               has_value ? "OBX-3 observation identifier missing" : "OBX without identifier or value: skipped",
               !has_value);
    if (!has_value) return;
  }
  fhir::value observation = fhir::value::make_object();
  observation.set("resourceType", str("Observation"));

  // Identity: OBX-21 when sent, else the report's filler number with the test code and sub-id.
  std::optional<fhir::value> identity = identifier_ei(repetition_at(s, 21), 1, "observation-id");
  std::string code = leaf(s, 3), sub_id = leaf(s, 4);
  if (!identity && report.identity) {
    std::string value = report.identity->find("value")->text() + "/" + (code.empty() ? leaf(s, 1) : code);
    if (!sub_id.empty()) value += "/" + sub_id;
    if (int n = ++report.observation_keys[value]; n > 1) value += "/" + std::to_string(n);
    identity = fhir::value::make_object();
    identity->set("system", str(report.identity->find("system")->text()));
    identity->set("value", str(value));
  }
  if (identity) append(observation, "identifier", *identity);

  static const std::map<std::string, std::string, std::less<>> statuses = {
      {"C", "corrected"},   {"D", "entered-in-error"}, {"F", "final"},
      {"I", "registered"},  {"N", "cancelled"},        {"O", "registered"},
      {"P", "preliminary"}, {"R", "preliminary"},      {"S", "preliminary"},
      {"U", "final"},       {"W", "entered-in-error"}, {"X", "cancelled"},
      {"A", "amended"}};
  std::string status_code = leaf(s, 11);
  if (auto it = statuses.find(status_code); it != statuses.end()) {
    observation.set("status", str(it->second));
  } else {
    problem_at(at(obx, 11),
               status_code.empty() ? error_code::required_field_missing : error_code::table_value_not_found,
               "OBX-11 result status '" + status_code + "' is not in table 0085; status unknown", true);
    observation.set("status", str("unknown"));
  }
  fhir::value category =
      table_concept("http://terminology.hl7.org/CodeSystem/observation-category", "laboratory", "Laboratory");
  append(observation, "category", std::move(category));
  if (auto concept_value = codeable_concept(repetition_at(s, 3), at(obx, 3))) {
    observation.set("code", std::move(*concept_value));
  } else {
    observation.set("code", table_concept("http://terminology.hl7.org/CodeSystem/data-absent-reason", "unknown"));
  }
  if (report.patient) observation.set("subject", reference(report.patient->urn));
  if (report.encounter) observation.set("encounter", reference(*report.encounter));
  std::string effective = leaf(s, 14);
  if (effective.empty() && report.obr.seg) effective = leaf(*report.obr.seg, 7);
  if (auto when = datetime(effective, at(obx, 14))) observation.set("effectiveDateTime", str(*when));

  for (const repetition* xcn : repetitions(s, 16)) {
    std::string display;
    auto urn = practitioner(xcn, at(obx, 16), &display);
    if (urn || !display.empty()) append(observation, "performer", reference(urn.value_or(""), display));
  }
  if (auto lab = organization(repetition_at(s, 23), at(obx, 23))) {
    append(observation, "performer", reference(*lab, leaf(s, 23)));
    if (std::find(report.performers.begin(), report.performers.end(), *lab) == report.performers.end())
      report.performers.push_back(*lab);
  }

  auto attachment = observation_value(obx, observation, report);

  // OBX-8 abnormal flags (table 0078) -> v3 ObservationInterpretation; Chinese LIS arrows too.
  for (const repetition* flag : repetitions(s, 8)) {
    static const std::map<std::string, std::string, std::less<>> v3 = {
        {"L", "L"},     {"H", "H"}, {"LL", "LL"}, {"HH", "HH"}, {"N", "N"},     {"A", "A"},
        {"AA", "AA"},   {"<", "<"}, {">", ">"},   {"S", "S"},   {"R", "R"},     {"I", "I"},
        {"U", "U"},     {"D", "D"}, {"B", "B"},   {"W", "W"},   {"NEG", "NEG"}, {"POS", "POS"},
        {"IND", "IND"}, {"E", "E"}, {"NR", "NR"}, {"HU", "HU"}, {"LU", "LU"},   {"DET", "DET"},
        {"ND", "ND"},   {"↑", "H"}, {"↓", "L"},   {"MS", "I"},  {"VS", "S"}};
    std::string flag_code = part(flag, 1);
    if (flag_code.empty()) continue;
    if (auto it = v3.find(flag_code); it != v3.end()) {
      append(observation, "interpretation",
             table_concept("http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", it->second));
    } else {
      problem_at(at(obx, 8), error_code::table_value_not_found,
                 "abnormal flag '" + flag_code + "' is not in table 0078", true);
      append(observation, "interpretation", table_concept("http://terminology.hl7.org/CodeSystem/v2-0078", flag_code));
    }
  }

  // OBX-7 reference range: "3.5-5.3", "3.5～5.3", "<5", "<=5", ">1", otherwise text only.
  if (std::string range = trim(leaf(s, 7)); !range.empty()) {
    fhir::value reference_range = fhir::value::make_object();
    const repetition* unit_field = repetition_at(s, 6);
    auto bound = [&](const std::string& number) -> std::optional<fhir::value> {
      auto d = decimal(number);
      if (!d) return std::nullopt;
      fhir::value q = fhir::value::make_object();
      q.set("value", fhir::value::make_number(*d));
      std::string printed = part(unit_field, 1).empty() ? part(unit_field, 2) : part(unit_field, 1);
      set_text(q, "unit", part(unit_field, 2).empty() ? part(unit_field, 1) : part(unit_field, 2));
      if (auto ucum =
              part(unit_field, 3) == "UCUM" ? std::optional<std::string>(part(unit_field, 1)) : ucum_unit(printed)) {
        q.set("system", str("http://unitsofmeasure.org"));
        q.set("code", str(*ucum));
      }
      return q;
    };
    std::optional<fhir::value> low, high;
    if (range.starts_with("<=") || range.starts_with("≤"))
      high = bound(range.substr(range.starts_with("<=") ? 2 : 3));
    else if (range.starts_with(">=") || range.starts_with("≥"))
      low = bound(range.substr(range.starts_with(">=") ? 2 : 3));
    else if (range.front() == '<')
      high = bound(range.substr(1));
    else if (range.front() == '>')
      low = bound(range.substr(1));
    else {
      for (std::string_view separator : {"～", "~", "—", "-"}) {
        std::size_t p = range.find(separator, 1);
        if (p == std::string::npos) continue;
        low = bound(range.substr(0, p));
        high = bound(range.substr(p + separator.size()));
        if (!low || !high) low.reset(), high.reset();
        break;
      }
    }
    if (low) reference_range.set("low", std::move(*low));
    if (high) reference_range.set("high", std::move(*high));
    reference_range.set("text", str(range));
    append(observation, "referenceRange", std::move(reference_range));
  }
  if (auto method = codeable_concept(repetition_at(s, 17), at(obx, 17))) observation.set("method", std::move(*method));

  for (const segment_ref& nte : notes) {
    std::string text;
    for (const repetition* r : repetitions(*nte.seg, 3)) text += (text.empty() ? "" : "\n") + part(r, 1);
    if (text.empty()) continue;
    fhir::value annotation = fhir::value::make_object();
    annotation.set("text", str(text));
    append(observation, "note", std::move(annotation));
  }

  std::string key = identity ? "Observation|" + identity->find("system")->text() + "|" + identity->find("value")->text()
                             : "Observation|" + std::to_string(obx.occurrence);
  if (attachment) {
    fhir::value document = fhir::value::make_object();
    document.set("resourceType", str("DocumentReference"));
    std::optional<fhir::value> document_identity;
    if (identity) {
      document_identity = fhir::value::make_object();
      document_identity->set("system", str(identity->find("system")->text()));
      document_identity->set("value", str(identity->find("value")->text() + "/attachment"));
      append(document, "identifier", *document_identity);
    }
    document.set("status", str("current"));
    if (const fhir::value* c = observation.find("code")) document.set("type", *c);
    if (report.patient) document.set("subject", reference(report.patient->urn));
    fhir::value content = fhir::value::make_object();
    content.set("attachment", std::move(*attachment));
    append(document, "content", std::move(content));
    std::string document_urn =
        add_entry("DocumentReference|" + key, std::move(document), document_identity, at(obx, 5));
    append(observation, "derivedFrom", reference(document_urn));
  }
  std::string urn = add_entry(key, std::move(observation), identity, at(obx, 3));
  report.results.push_back(urn);
}

std::optional<std::string> mapper::map_specimen(const segment_ref& spm, report_context& report) {
  const segment& s = *spm.seg;
  fhir::value specimen = fhir::value::make_object();
  specimen.set("resourceType", str("Specimen"));
  // SPM-2 (EIP): placer assigned id & ... ^ filler assigned id & ...
  const repetition* eip = repetition_at(s, 2);
  auto placer = identifier_ei_sub(eip, 1, "specimen-id", "PLAC");
  auto filler = identifier_ei_sub(eip, 2, "specimen-id", "FILL");
  std::optional<fhir::value> identity = filler ? filler : placer;
  if (identity && report.identity && part(eip, 1, 2).empty() && part(eip, 1, 3).empty() && !filler) {
    // An id without an authority is only unique within the report.
    identity->set("system", str(report.identity->find("system")->text()));
    identity->set("value",
                  str(report.identity->find("value")->text() + "/specimen/" + identity->find("value")->text()));
    placer = identity;
  }
  if (placer) append(specimen, "identifier", *placer);
  if (filler) append(specimen, "identifier", *filler);
  if (auto type = codeable_concept(repetition_at(s, 4), at(spm, 4))) specimen.set("type", std::move(*type));
  if (report.patient) specimen.set("subject", reference(report.patient->urn));
  if (auto received = datetime(leaf(s, 18), at(spm, 18))) specimen.set("receivedTime", str(*received));
  fhir::value collection = fhir::value::make_object();
  if (const repetition* dr = repetition_at(s, 17)) {
    std::string start = part(dr, 1), end = part(dr, 2);
    if (!end.empty()) {
      fhir::value period = fhir::value::make_object();
      if (auto a = datetime(start, at(spm, 17))) period.set("start", str(*a));
      if (auto b = datetime(end, at(spm, 17))) period.set("end", str(*b));
      collection.set("collectedPeriod", std::move(period));
    } else if (auto a = datetime(start, at(spm, 17))) {
      collection.set("collectedDateTime", str(*a));
    }
  }
  if (auto method = codeable_concept(repetition_at(s, 7), at(spm, 7))) collection.set("method", std::move(*method));
  if (auto site = codeable_concept(repetition_at(s, 8), at(spm, 8))) collection.set("bodySite", std::move(*site));
  if (!collection.members().empty()) specimen.set("collection", std::move(collection));
  std::string key = identity ? "Specimen|" + identity->find("system")->text() + "|" + identity->find("value")->text()
                             : "Specimen|" + std::to_string(spm.occurrence);
  std::string urn = add_entry(key, std::move(specimen), identity, at(spm, 2));
  if (std::find(report.specimens.begin(), report.specimens.end(), urn) == report.specimens.end())
    report.specimens.push_back(urn);
  return urn;
}

void mapper::map_report(report_context& report) {
  const segment& obr = *report.obr.seg;
  fhir::value diagnostic = fhir::value::make_object();
  diagnostic.set("resourceType", str("DiagnosticReport"));
  for (const auto& identifier : report.identifiers) append(diagnostic, "identifier", identifier);

  static const std::map<std::string, std::string, std::less<>> statuses = {
      {"O", "registered"}, {"I", "registered"}, {"S", "partial"}, {"A", "partial"},   {"P", "preliminary"},
      {"C", "corrected"},  {"R", "partial"},    {"F", "final"},   {"X", "cancelled"}, {"M", "amended"}};
  std::string status_code = leaf(obr, 25);
  if (auto it = statuses.find(status_code); it != statuses.end()) {
    diagnostic.set("status", str(it->second));
  } else {
    problem_at(at(report.obr, 25),
               status_code.empty() ? error_code::required_field_missing : error_code::table_value_not_found,
               "OBR-25 result status '" + status_code + "' is not in table 0123; status unknown", true);
    diagnostic.set("status", str("unknown"));
  }
  std::string section = leaf(obr, 24).empty() ? "LAB" : leaf(obr, 24);
  append(diagnostic, "category", table_concept("http://terminology.hl7.org/CodeSystem/v2-0074", section));
  if (auto code = codeable_concept(repetition_at(obr, 4), at(report.obr, 4))) {
    diagnostic.set("code", std::move(*code));
  } else {
    problem_at(at(report.obr, 4), error_code::required_field_missing, "OBR-4 universal service identifier missing",
               false);
    diagnostic.set("code", table_concept("http://terminology.hl7.org/CodeSystem/data-absent-reason", "unknown"));
  }
  if (report.patient) diagnostic.set("subject", reference(report.patient->urn));
  if (report.encounter) diagnostic.set("encounter", reference(*report.encounter));
  if (auto when = datetime(leaf(obr, 7), at(report.obr, 7))) diagnostic.set("effectiveDateTime", str(*when));
  if (std::string issued = leaf(obr, 22); !issued.empty()) {
    auto when = datetime(issued, at(report.obr, 22));
    if (when && fhir::is_valid_primitive("instant", *when))
      diagnostic.set("issued", str(*when));
    else if (when)
      diagnostic.set("issued", str(*when + (when->size() == 10 ? "T00:00:00" + options.default_offset : "")));
    if (const fhir::value* i = diagnostic.find("issued"); i && !fhir::is_valid_primitive("instant", i->text())) {
      diagnostic.erase("issued");
      problem_at(at(report.obr, 22), error_code::data_type, "OBR-22 '" + issued + "' is too imprecise for issued",
                 true);
    }
  }
  for (const auto& lab : report.performers) append(diagnostic, "performer", reference(lab));
  // OBR-32 principal result interpreter (NDL: the name is CNN in sub-components of component 1).
  if (const repetition* ndl = repetition_at(obr, 32)) {
    repetition xcn;
    if (!ndl->components.empty())
      for (const auto& sub : ndl->components.front().subcomponents) xcn.components.push_back(component{{sub}});
    if (xcn.components.size() >= 9) {
      // CNN-9..11 are the authority's parts; XCN keeps them as sub-components of component 9.
      component authority;
      for (std::size_t i = 8; i < xcn.components.size() && i < 11; ++i)
        authority.subcomponents.push_back(xcn.components[i].subcomponents.front());
      xcn.components.resize(8);
      xcn.components.push_back(std::move(authority));
    }
    std::string display;
    auto urn = practitioner(&xcn, at(report.obr, 32), &display);
    if (urn || !display.empty()) append(diagnostic, "resultsInterpreter", reference(urn.value_or(""), display));
  }
  for (const auto& specimen : report.specimens) append(diagnostic, "specimen", reference(specimen));
  for (const auto& result : report.results) append(diagnostic, "result", reference(result));
  if (!report.notes.empty()) {
    for (auto& note : report.notes) {
      fhir::value extension = fhir::value::make_object();
      extension.set("url", str("http://hl7.org/fhir/5.0/StructureDefinition/extension-DiagnosticReport.note"));
      extension.set("valueAnnotation", std::move(note));
      append(diagnostic, "extension", std::move(extension));
    }
  }
  // Observations name the report's specimens (SPM follows the OBX groups in v2.5+).
  for (const auto& result : report.results)
    if (fhir::value* observation = entry_resource(result); observation && !report.specimens.empty())
      observation->set("specimen", reference(report.specimens.front()));

  std::string key = report.identity ? "DiagnosticReport|" + report.identity->find("system")->text() + "|" +
                                          report.identity->find("value")->text()
                                    : "DiagnosticReport|" + std::to_string(report.obr.occurrence);
  add_entry(key, std::move(diagnostic), report.identity, at(report.obr, 3));
}

void mapper::map_oru() {
  std::optional<patient_context> patient;
  std::optional<std::string> encounter;
  std::optional<segment_ref> orc;
  std::optional<report_context> report;
  std::optional<segment_ref> pending_obx;
  std::vector<segment_ref> pending_notes;
  report_context patient_level;  // OBX outside an OBR group (PATIENT_OBSERVATION in v2.7+)

  auto flush_observation = [&] {
    if (pending_obx) {
      report_context& owner = report ? *report : patient_level;
      if (!report) {
        owner.patient = patient;
        owner.encounter = encounter;
      }
      map_observation(owner, *pending_obx, pending_notes);
    }
    pending_obx.reset();
    pending_notes.clear();
  };
  auto flush_report = [&] {
    flush_observation();
    if (report) map_report(*report);
    report.reset();
  };

  for (const segment_ref& ref : numbered_segments(msg)) {
    const std::string& id = ref.seg->id;
    if (id != "NTE" && id != "PRT") flush_observation();
    if (id == "PID") {
      flush_report();
      patient = map_patient(ref);
      encounter.reset();
      orc.reset();
    } else if (id == "PV1") {
      if (patient) encounter = map_encounter(ref, *patient, "R01");
    } else if (id == "ORC") {
      flush_report();
      orc = ref;
    } else if (id == "OBR") {
      flush_report();
      report.emplace();
      report->obr = ref;
      report->orc = orc;
      report->patient = patient;
      report->encounter = encounter;
      const segment& obr = *ref.seg;
      auto placer = identifier_ei(repetition_at(obr, 2), 1, "placer-order", "PLAC");
      if (!placer && orc) placer = identifier_ei(repetition_at(*orc->seg, 2), 1, "placer-order", "PLAC");
      auto filler = identifier_ei(repetition_at(obr, 3), 1, "filler-order", "FILL");
      if (!filler && orc) filler = identifier_ei(repetition_at(*orc->seg, 3), 1, "filler-order", "FILL");
      if (placer) report->identifiers.push_back(*placer);
      if (filler) report->identifiers.push_back(*filler);
      if (filler || placer) {
        report->identity = fhir::value::make_object();
        const fhir::value& chosen = filler ? *filler : *placer;
        report->identity->set("system", *chosen.find("system"));
        report->identity->set("value", *chosen.find("value"));
      }
      if (!patient) problem_at(at(ref, 0), error_code::segment_sequence, "OBR without a usable PID before it", false);
      // OBR-15 specimen source (v2.4 and before, when no SPM follows).
      if (const repetition* source = repetition_at(obr, 15); source && !msg.find("SPM")) {
        fhir::value specimen = fhir::value::make_object();
        specimen.set("resourceType", str("Specimen"));
        std::optional<fhir::value> identity;
        if (report->identity) {
          identity = fhir::value::make_object();
          identity->set("system", *report->identity->find("system"));
          identity->set("value", str(report->identity->find("value")->text() + "/specimen"));
          append(specimen, "identifier", *identity);
        }
        repetition type;
        if (!source->components.empty())
          for (const auto& sub : source->components.front().subcomponents) type.components.push_back(component{{sub}});
        if (auto concept_value = codeable_concept(&type, at(ref, 15))) specimen.set("type", std::move(*concept_value));
        if (patient) specimen.set("subject", reference(patient->urn));
        if (auto collected = datetime(leaf(obr, 7), at(ref, 7))) {
          fhir::value collection = fhir::value::make_object();
          collection.set("collectedDateTime", str(*collected));
          specimen.set("collection", std::move(collection));
        }
        std::string key =
            identity ? "Specimen|" + identity->find("value")->text() : "Specimen|obr" + std::to_string(ref.occurrence);
        report->specimens.push_back(add_entry(key, std::move(specimen), identity, at(ref, 15)));
      }
    } else if (id == "OBX") {
      if (!patient) {
        problem_at(at(ref, 0), error_code::segment_sequence, "OBX without a usable PID before it", false);
        continue;
      }
      pending_obx = ref;
    } else if (id == "NTE") {
      if (pending_obx) {
        pending_notes.push_back(ref);
      } else if (report) {
        std::string text;
        for (const repetition* r : repetitions(*ref.seg, 3)) text += (text.empty() ? "" : "\n") + part(r, 1);
        if (!text.empty()) {
          fhir::value annotation = fhir::value::make_object();
          annotation.set("text", str(text));
          report->notes.push_back(std::move(annotation));
        }
      }
    } else if (id == "SPM") {
      if (report) map_specimen(ref, *report);
    }
  }
  flush_report();
  if (!msg.find("PID"))
    problem_at(location{"PID", 1, 0, 0, 0, 0}, error_code::segment_sequence, "PID segment missing", false);
  if (!msg.find("OBR"))
    problem_at(location{"OBR", 1, 0, 0, 0, 0}, error_code::segment_sequence, "OBR segment missing", false);
}

}  // namespace yilian::mappers::hl7v2::detail
