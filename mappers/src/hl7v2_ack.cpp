#include "yilian/mappers/hl7v2_ack.hpp"

namespace yilian::mappers::hl7v2 {
namespace {

field text_field(std::string_view text) {
  field f;
  if (!text.empty()) f.repetitions.emplace_back().components.emplace_back().subcomponents.emplace_back(text);
  return f;
}

// One repetition of components, each a single sub-component; trailing empty components dropped.
repetition components_of(std::vector<std::string> values) {
  while (!values.empty() && values.back().empty()) values.pop_back();
  repetition rep;
  for (std::string& v : values) rep.components.emplace_back().subcomponents.push_back(std::move(v));
  return rep;
}

field components_field(std::vector<std::string> values) {
  field f;
  repetition rep = components_of(std::move(values));
  if (!rep.components.empty()) f.repetitions.push_back(std::move(rep));
  return f;
}

void trim_trailing_empty_fields(segment& s, std::size_t keep) {
  while (s.fields.size() > keep && s.fields.back().repetitions.empty()) s.fields.pop_back();
}

std::string number_or_empty(long n) { return n > 0 ? std::to_string(n) : std::string(); }

// The minor version number of "2.x[.y]" (5 for "2.5.1"); 5 when unreadable.
int minor_version(std::string_view version) {
  if (version.size() >= 3 && version.substr(0, 2) == "2." && version[2] >= '0' && version[2] <= '9') return version[2] - '0';
  return 5;
}

std::string code_number(error_code code) { return std::to_string(static_cast<int>(code)); }

}  // namespace

std::string_view to_string(ack_code code) noexcept {
  switch (code) {
    case ack_code::AA: return "AA";
    case ack_code::AE: return "AE";
    case ack_code::AR: return "AR";
    case ack_code::CA: return "CA";
    case ack_code::CE: return "CE";
    case ack_code::CR: return "CR";
  }
  return "AR";
}

bool wants_enhanced_acknowledgment(const message& received) {
  const segment* msh = received.find("MSH");
  return msh && (!msh->value(15).empty() || !msh->value(16).empty());
}

ack_code accept_level(ack_code code) noexcept {
  switch (code) {
    case ack_code::AA: return ack_code::CA;
    case ack_code::AE: return ack_code::CE;
    case ack_code::AR: return ack_code::CR;
    default: return code;
  }
}

std::string_view error_text(error_code code) noexcept {
  switch (code) {
    case error_code::accepted: return "Message accepted";
    case error_code::segment_sequence: return "Segment sequence error";
    case error_code::required_field_missing: return "Required field missing";
    case error_code::data_type: return "Data type error";
    case error_code::table_value_not_found: return "Table value not found";
    case error_code::value_too_long: return "Value too long";
    case error_code::unsupported_message_type: return "Unsupported message type";
    case error_code::unsupported_event: return "Unsupported event code";
    case error_code::unsupported_processing_id: return "Unsupported processing id";
    case error_code::unsupported_version: return "Unsupported version id";
    case error_code::unknown_key: return "Unknown key identifier";
    case error_code::duplicate_key: return "Duplicate key identifier";
    case error_code::application_record_locked: return "Application record locked";
    case error_code::application_internal_error: return "Application internal error";
  }
  return "Application internal error";
}

std::string make_ack(const message* received, ack_code code, const std::vector<problem>& problems,
                     std::string_view ack_control_id, std::string_view now_ts) {
  const segment* received_msh = received ? received->find("MSH") : nullptr;
  if (!received_msh) {
    received = nullptr;  // nothing to answer to but the fact that it could not be read
    const bool accept_mode = code == ack_code::CA || code == ack_code::CE || code == ack_code::CR;
    code = accept_mode ? ack_code::CR : ack_code::AR;
  }
  auto received_field = [&](int number) {
    const field* f = received_msh ? received_msh->field_at(number) : nullptr;
    return f ? *f : field{};
  };

  message ack;
  // The sender's delimiters, unless its MSH-2 left some unnamed (the ACK needs all four).
  if (received) {
    const delimiters& theirs = received->separators;
    if (theirs.component != 0 && theirs.repetition != 0 && theirs.escape != 0 && theirs.subcomponent != 0)
      ack.separators = theirs;
  }
  const delimiters& d = ack.separators;
  std::string version = received_msh ? received_msh->value(12) : std::string();
  if (version.empty()) version = "2.5";
  const int minor = minor_version(version);

  segment msh{"MSH", {}};
  std::string encoding_characters;
  for (char c : {d.component, d.repetition, d.escape, d.subcomponent, d.truncation})
    if (c != 0) encoding_characters += c;
  msh.fields.push_back(text_field(std::string(1, d.field)));
  msh.fields.push_back(text_field(encoding_characters));
  msh.fields.push_back(received_field(5));  // MSH-3 sending application: who received
  msh.fields.push_back(received_field(6));  // MSH-4
  msh.fields.push_back(received_field(3));  // MSH-5 receiving application: who sent
  msh.fields.push_back(received_field(4));  // MSH-6
  msh.fields.push_back(text_field(now_ts));  // MSH-7
  msh.fields.emplace_back();                 // MSH-8 security
  const std::string event = received_msh ? received_msh->value(9, 1, 2) : std::string();
  // MSH-9.3 (message structure) exists from v2.3.1 on.
  msh.fields.push_back(version == "2.3" ? components_field({"ACK", event}) : components_field({"ACK", event, "ACK"}));
  msh.fields.push_back(text_field(ack_control_id));  // MSH-10
  field processing = received_field(11);
  msh.fields.push_back(processing.repetitions.empty() ? text_field("P") : processing);  // MSH-11
  field version_field = received_field(12);
  msh.fields.push_back(version_field.repetitions.empty() ? text_field(version) : version_field);  // MSH-12
  msh.fields.resize(17);
  msh.fields.push_back(received_field(18));  // MSH-18 charset: the answer is in the sender's
  trim_trailing_empty_fields(msh, 12);

  const problem* first_error = nullptr;
  for (const problem& p : problems)
    if (!p.is_warning) {
      first_error = &p;
      break;
    }
  segment msa{"MSA", {}};
  msa.fields.push_back(text_field(to_string(code)));
  msa.fields.push_back(text_field(received ? received->control_id() : std::string()));
  // MSA-3 (text message) was withdrawn in v2.7; ERR carries the details there.
  if (minor < 7 && first_error) msa.fields.push_back(text_field(first_error->where.text() + ": " + first_error->message));
  trim_trailing_empty_fields(msa, 1);

  ack.segments.push_back(std::move(msh));
  ack.segments.push_back(std::move(msa));

  if (minor <= 4) {
    // v2.3/2.4: one ERR, ERR-1 (ELD) repeating: segment^sequence^field^code&text&HL70357.
    if (!problems.empty()) {
      segment err{"ERR", {}};
      field& locations = err.fields.emplace_back();
      for (const problem& p : problems) {
        repetition rep = components_of({p.where.segment, p.where.segment.empty() ? "" : std::to_string(p.where.occurrence),
                                        number_or_empty(p.where.field)});
        rep.components.resize(3);
        for (component& c : rep.components)
          if (c.subcomponents.empty()) c.subcomponents.emplace_back();
        rep.components.push_back(component{{code_number(p.code), p.message, "HL70357"}});
        locations.repetitions.push_back(std::move(rep));
      }
      ack.segments.push_back(std::move(err));
    }
  } else {
    // v2.5+: one ERR per problem.
    for (const problem& p : problems) {
      segment err{"ERR", {}};
      err.fields.emplace_back();  // ERR-1, the v2.4 layout, stays empty
      if (p.where.segment.empty())
        err.fields.emplace_back();
      else
        err.fields.push_back(components_field(
            {p.where.segment, std::to_string(p.where.occurrence), number_or_empty(p.where.field),
             p.where.field > 0 ? std::to_string(std::max(p.where.repetition, 1)) : std::string(),
             number_or_empty(p.where.component), number_or_empty(p.where.subcomponent)}));
      err.fields.push_back(components_field({code_number(p.code), std::string(error_text(p.code)), "HL70357"}));
      err.fields.push_back(text_field(p.is_warning ? "W" : "E"));  // ERR-4, table 0516
      err.fields.resize(7);                                         // ERR-5..7
      err.fields.push_back(text_field(p.message));                  // ERR-8 user message
      ack.segments.push_back(std::move(err));
    }
  }
  return encode(ack);
}

}  // namespace yilian::mappers::hl7v2
