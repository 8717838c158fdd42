# ruff: noqa: E501  (the operation table: one line per operation)
"""PURE: the SES v2 operations by HTTP method and path, as botocore's sesv2 service model
(API version 2019-09-27) defines them, to name the operation of a request relay does not
serve ("relay does not support the SES operation X") instead of answering an anonymous 404.
Path labels ({Name}, {Name+}) match one path segment (several for the greedy form).
"""

from __future__ import annotations

import functools
import re

OPERATIONS: tuple[tuple[str, str, str], ...] = (
    ("POST", "/v2/email/identity/certificates", "AssociateEmailIdentityCertificate"),
    ("POST", "/v2/email/metrics/batch", "BatchGetMetricData"),
    ("PUT", "/v2/email/export-jobs/{JobId}/cancel", "CancelExportJob"),
    ("POST", "/v2/email/configuration-sets", "CreateConfigurationSet"),
    ("POST", "/v2/email/configuration-sets/{ConfigurationSetName}/event-destinations", "CreateConfigurationSetEventDestination"),
    ("POST", "/v2/email/contact-lists/{ContactListName}/contacts", "CreateContact"),
    ("POST", "/v2/email/contact-lists", "CreateContactList"),
    ("POST", "/v2/email/custom-verification-email-templates", "CreateCustomVerificationEmailTemplate"),
    ("POST", "/v2/email/dedicated-ip-pools", "CreateDedicatedIpPool"),
    ("POST", "/v2/email/deliverability-dashboard/test", "CreateDeliverabilityTestReport"),
    ("POST", "/v2/email/identities", "CreateEmailIdentity"),
    ("POST", "/v2/email/identities/{EmailIdentity}/policies/{PolicyName}", "CreateEmailIdentityPolicy"),
    ("POST", "/v2/email/templates", "CreateEmailTemplate"),
    ("POST", "/v2/email/export-jobs", "CreateExportJob"),
    ("POST", "/v2/email/import-jobs", "CreateImportJob"),
    ("POST", "/v2/email/multi-region-endpoints", "CreateMultiRegionEndpoint"),
    ("POST", "/v2/email/tenants", "CreateTenant"),
    ("POST", "/v2/email/tenants/resources", "CreateTenantResourceAssociation"),
    ("DELETE", "/v2/email/configuration-sets/{ConfigurationSetName}", "DeleteConfigurationSet"),
    ("DELETE", "/v2/email/configuration-sets/{ConfigurationSetName}/event-destinations/{EventDestinationName}", "DeleteConfigurationSetEventDestination"),
    ("DELETE", "/v2/email/contact-lists/{ContactListName}/contacts/{EmailAddress}", "DeleteContact"),
    ("DELETE", "/v2/email/contact-lists/{ContactListName}", "DeleteContactList"),
    ("DELETE", "/v2/email/custom-verification-email-templates/{TemplateName}", "DeleteCustomVerificationEmailTemplate"),
    ("DELETE", "/v2/email/dedicated-ip-pools/{PoolName}", "DeleteDedicatedIpPool"),
    ("DELETE", "/v2/email/identities/{EmailIdentity}", "DeleteEmailIdentity"),
    ("DELETE", "/v2/email/identities/{EmailIdentity}/policies/{PolicyName}", "DeleteEmailIdentityPolicy"),
    ("DELETE", "/v2/email/templates/{TemplateName}", "DeleteEmailTemplate"),
    ("DELETE", "/v2/email/multi-region-endpoints/{EndpointName}", "DeleteMultiRegionEndpoint"),
    ("DELETE", "/v2/email/suppression/addresses/{EmailAddress}", "DeleteSuppressedDestination"),
    ("POST", "/v2/email/tenants/delete", "DeleteTenant"),
    ("POST", "/v2/email/tenants/resources/delete", "DeleteTenantResourceAssociation"),
    ("POST", "/v2/email/identity/certificates/delete", "DisassociateEmailIdentityCertificate"),
    ("GET", "/v2/email/account", "GetAccount"),
    ("GET", "/v2/email/deliverability-dashboard/blacklist-report", "GetBlacklistReports"),
    ("GET", "/v2/email/configuration-sets/{ConfigurationSetName}", "GetConfigurationSet"),
    ("GET", "/v2/email/configuration-sets/{ConfigurationSetName}/event-destinations", "GetConfigurationSetEventDestinations"),
    ("GET", "/v2/email/contact-lists/{ContactListName}/contacts/{EmailAddress}", "GetContact"),
    ("GET", "/v2/email/contact-lists/{ContactListName}", "GetContactList"),
    ("GET", "/v2/email/custom-verification-email-templates/{TemplateName}", "GetCustomVerificationEmailTemplate"),
    ("GET", "/v2/email/dedicated-ips/{IP}", "GetDedicatedIp"),
    ("GET", "/v2/email/dedicated-ip-pools/{PoolName}", "GetDedicatedIpPool"),
    ("GET", "/v2/email/dedicated-ips", "GetDedicatedIps"),
    ("GET", "/v2/email/deliverability-dashboard", "GetDeliverabilityDashboardOptions"),
    ("GET", "/v2/email/deliverability-dashboard/test-reports/{ReportId}", "GetDeliverabilityTestReport"),
    ("GET", "/v2/email/deliverability-dashboard/campaigns/{CampaignId}", "GetDomainDeliverabilityCampaign"),
    ("GET", "/v2/email/deliverability-dashboard/statistics-report/{Domain}", "GetDomainStatisticsReport"),
    ("POST", "/v2/email/email-address-insights/", "GetEmailAddressInsights"),
    ("GET", "/v2/email/identities/{EmailIdentity}", "GetEmailIdentity"),
    ("GET", "/v2/email/identities/{EmailIdentity}/policies", "GetEmailIdentityPolicies"),
    ("GET", "/v2/email/templates/{TemplateName}", "GetEmailTemplate"),
    ("GET", "/v2/email/export-jobs/{JobId}", "GetExportJob"),
    ("GET", "/v2/email/import-jobs/{JobId}", "GetImportJob"),
    ("GET", "/v2/email/insights/{MessageId}/", "GetMessageInsights"),
    ("GET", "/v2/email/multi-region-endpoints/{EndpointName}", "GetMultiRegionEndpoint"),
    ("GET", "/v2/email/reputation/entities/{ReputationEntityType}/{ReputationEntityReference}", "GetReputationEntity"),
    ("GET", "/v2/email/suppression/addresses/{EmailAddress}", "GetSuppressedDestination"),
    ("POST", "/v2/email/tenants/get", "GetTenant"),
    ("POST", "/v2/email/list-configuration-sets", "ListConfigurationSets"),
    ("GET", "/v2/email/contact-lists", "ListContactLists"),
    ("POST", "/v2/email/contact-lists/{ContactListName}/contacts/list", "ListContacts"),
    ("GET", "/v2/email/custom-verification-email-templates", "ListCustomVerificationEmailTemplates"),
    ("GET", "/v2/email/dedicated-ip-pools", "ListDedicatedIpPools"),
    ("GET", "/v2/email/deliverability-dashboard/test-reports", "ListDeliverabilityTestReports"),
    ("GET", "/v2/email/deliverability-dashboard/domains/{SubscribedDomain}/campaigns", "ListDomainDeliverabilityCampaigns"),
    ("POST", "/v2/email/list-identities", "ListEmailIdentities"),
    ("POST", "/v2/email/identity/certificates/list", "ListEmailIdentityCertificates"),
    ("GET", "/v2/email/templates", "ListEmailTemplates"),
    ("POST", "/v2/email/list-export-jobs", "ListExportJobs"),
    ("POST", "/v2/email/import-jobs/list", "ListImportJobs"),
    ("GET", "/v2/email/multi-region-endpoints", "ListMultiRegionEndpoints"),
    ("POST", "/v2/email/vdm/recommendations", "ListRecommendations"),
    ("POST", "/v2/email/reputation/entities", "ListReputationEntities"),
    ("POST", "/v2/email/resources/tenants/list", "ListResourceTenants"),
    ("GET", "/v2/email/suppression/addresses", "ListSuppressedDestinations"),
    ("GET", "/v2/email/tags", "ListTagsForResource"),
    ("POST", "/v2/email/tenants/resources/list", "ListTenantResources"),
    ("POST", "/v2/email/tenants/list", "ListTenants"),
    ("PUT", "/v2/email/account/dedicated-ips/warmup", "PutAccountDedicatedIpWarmupAttributes"),
    ("POST", "/v2/email/account/delivery", "PutAccountDeliveryAttributes"),
    ("POST", "/v2/email/account/details", "PutAccountDetails"),
    ("PUT", "/v2/email/account/pricing-attributes", "PutAccountPricingAttributes"),
    ("PUT", "/v2/email/account/sending", "PutAccountSendingAttributes"),
    ("PUT", "/v2/email/account/suppression", "PutAccountSuppressionAttributes"),
    ("PUT", "/v2/email/account/vdm", "PutAccountVdmAttributes"),
    ("PUT", "/v2/email/configuration-sets/{ConfigurationSetName}/archiving-options", "PutConfigurationSetArchivingOptions"),
    ("PUT", "/v2/email/configuration-sets/{ConfigurationSetName}/delivery-options", "PutConfigurationSetDeliveryOptions"),
    ("PUT", "/v2/email/configuration-sets/{ConfigurationSetName}/reputation-options", "PutConfigurationSetReputationOptions"),
    ("PUT", "/v2/email/configuration-sets/{ConfigurationSetName}/sending", "PutConfigurationSetSendingOptions"),
    ("PUT", "/v2/email/configuration-sets/{ConfigurationSetName}/suppression-options", "PutConfigurationSetSuppressionOptions"),
    ("PUT", "/v2/email/configuration-sets/{ConfigurationSetName}/tracking-options", "PutConfigurationSetTrackingOptions"),
    ("PUT", "/v2/email/configuration-sets/{ConfigurationSetName}/vdm-options", "PutConfigurationSetVdmOptions"),
    ("PUT", "/v2/email/dedicated-ips/{IP}/pool", "PutDedicatedIpInPool"),
    ("PUT", "/v2/email/dedicated-ip-pools/{PoolName}/scaling", "PutDedicatedIpPoolScalingAttributes"),
    ("PUT", "/v2/email/dedicated-ips/{IP}/warmup", "PutDedicatedIpWarmupAttributes"),
    ("PUT", "/v2/email/deliverability-dashboard", "PutDeliverabilityDashboardOption"),
    ("PUT", "/v2/email/identities/{EmailIdentity}/configuration-set", "PutEmailIdentityConfigurationSetAttributes"),
    ("PUT", "/v2/email/identities/{EmailIdentity}/dkim", "PutEmailIdentityDkimAttributes"),
    ("PUT", "/v2/email/identities/{EmailIdentity}/dkim/signing", "PutEmailIdentityDkimSigningAttributes"),
    ("PUT", "/v2/email/identities/{EmailIdentity}/feedback", "PutEmailIdentityFeedbackAttributes"),
    ("PUT", "/v2/email/identities/{EmailIdentity}/mail-from", "PutEmailIdentityMailFromAttributes"),
    ("PUT", "/v2/email/suppression/addresses", "PutSuppressedDestination"),
    ("POST", "/v2/email/tenant/suppression", "PutTenantSuppressionAttributes"),
    ("POST", "/v2/email/outbound-bulk-emails", "SendBulkEmail"),
    ("POST", "/v2/email/outbound-custom-verification-emails", "SendCustomVerificationEmail"),
    ("POST", "/v2/email/outbound-emails", "SendEmail"),
    ("POST", "/v2/email/tags", "TagResource"),
    ("POST", "/v2/email/templates/{TemplateName}/render", "TestRenderEmailTemplate"),
    ("DELETE", "/v2/email/tags", "UntagResource"),
    ("POST", "/v2/email/update-configuration-sets", "UpdateConfigurationSet"),
    ("PUT", "/v2/email/configuration-sets/{ConfigurationSetName}/event-destinations/{EventDestinationName}", "UpdateConfigurationSetEventDestination"),
    ("PUT", "/v2/email/contact-lists/{ContactListName}/contacts/{EmailAddress}", "UpdateContact"),
    ("PUT", "/v2/email/contact-lists/{ContactListName}", "UpdateContactList"),
    ("PUT", "/v2/email/custom-verification-email-templates/{TemplateName}", "UpdateCustomVerificationEmailTemplate"),
    ("PUT", "/v2/email/identities/{EmailIdentity}/policies/{PolicyName}", "UpdateEmailIdentityPolicy"),
    ("PUT", "/v2/email/templates/{TemplateName}", "UpdateEmailTemplate"),
    ("PUT", "/v2/email/reputation/entities/{ReputationEntityType}/{ReputationEntityReference}/customer-managed-status", "UpdateReputationEntityCustomerManagedStatus"),
    ("PUT", "/v2/email/reputation/entities/{ReputationEntityType}/{ReputationEntityReference}/policy", "UpdateReputationEntityPolicy"),
)


@functools.cache
def _compiled() -> list[tuple[str, re.Pattern[str], str]]:
    out = []
    for method, uri, name in OPERATIONS:
        pattern = re.sub(r"\\{[^}]+\\+\\}", "[^?]+", re.escape(uri))
        pattern = re.sub(r"\\{[^}]+\\}", "[^/?]+", pattern)
        out.append((method, re.compile(f"^{pattern}$"), name))
    return out


def operation_of(method: str, path: str) -> str | None:
    """The SES v2 operation name of `method` `path` (the path without its query), or None."""
    for m, pattern, name in _compiled():
        if m == method and pattern.match(path):
            return name
    return None
