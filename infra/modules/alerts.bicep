// Alerts as code: an Azure Monitor log search alert rule per health check, one for ADX ingestion
// failures, and an action group that notifies whoever the parameters name.
//
// How a rule reaches ADX. The checks live in ADX, in the stored function HealthChecks
// (auditlake/kql/functions/HealthChecks.kql, shared with `auditlake health`), so the rules are
// log search alerts (Microsoft.Insights/scheduledQueryRules) scoped to the Log Analytics
// workspace whose query reads ADX through the cross-service adx() pattern. Microsoft documents
// this for alert rules, with three conditions that shape this module:
//   * the rule must query with a managed identity, which needs Reader on the ADX cluster and
//     Database Viewer on the database: one user-assigned identity serves every rule (main.bicep
//     creates it; adx-database.bicep grants it both roles; the workspace role is granted here);
//   * adx() accepts only functions without parameters, so the rules call HealthChecksForAlerts,
//     which adx-database.bicep creates as HealthChecks(<this deployment's thresholds>);
//   * cross-service queries are not supported in the government clouds: there main.bicep turns
//     the HealthChecks rules off and `auditlake health` (or HealthChecksForAlerts) is the check.
// The alternative, the function app computing the checks and sending them to Application
// Insights, would need a second definition of the checks, or an app identity that can read the
// audit log (it is Database Ingestor only), and it would go silent exactly when the app does.
//
// ADX ingestion failures are read from the cluster's own FailedIngestion diagnostic log in the
// workspace, not from the ledger: the app records a failure it is told about as a failed blob
// (BlobFailed), but the ledger reaches ADX by the same ingestion that is failing, failures of
// the bookkeeping tables leave no blob behind, and the diagnostic log still arrives when
// nothing can be ingested at all. An existing cluster (adxClusterResourceId) must send its
// FailedIngestion log to this workspace (resource-specific table) for that rule to see it.

@description('Azure region of the rules (the action group is global).')
param location string

@description('Tags applied to every resource.')
param tags object = {}

@description('Prefix of the resource names; each rule is <prefix>-<check>.')
param namePrefix string

@description('Name of the action group (created only when it has a receiver).')
param actionGroupName string

@description('Email addresses the action group notifies; with no email and no webhook there is no action group and the alerts only show in Azure Monitor.')
param emailAddresses array = []

@description('Webhook URIs the action group posts the common alert schema to. A URI that carries a key in its query string is a secret kept in the deployment history: prefer an endpoint that authenticates the caller otherwise.')
param webhookUris array = []

@description('Resource id of the Log Analytics workspace the rules run in.')
param workspaceId string

@description('Resource id of the user-assigned identity the rules query with.')
param identityId string

@description('Principal id of that identity (Log Analytics Reader on the workspace).')
param identityPrincipalId string

@description('ADX engine URI (https://<cluster>.<region>.kusto.windows.net).')
param adxQueryUri string

@description('ADX database.')
param adxDatabase string

@description('The function without parameters that runs HealthChecks with the deployment\'s thresholds.')
param healthFunction string = 'HealthChecksForAlerts'

@description('Create the rules that query ADX with adx() (not supported in the government clouds).')
param healthRulesEnabled bool = true

@description('How often each rule runs (ISO 8601; adx() queries cannot run every minute).')
@allowed(['PT5M', 'PT10M', 'PT15M', 'PT30M', 'PT1H'])
param evaluationFrequency string = 'PT15M'

// The thresholds. LogFlowGap, BlobNearExpiry and CollectorRunFailing are judged inside
// HealthChecks (gapHours, nearExpiryHours, failedRuns, passed to adx-database.bicep); here each
// of those rules fires on any row. The others fire when their rows exceed a count.
@description('LogFlowGap: hours a feed may stay silent (applied in HealthChecksForAlerts).')
@minValue(1)
param gapHours int = 6

@description('BlobNearExpiry: hours before expiry at which an unsettled blob alerts (applied in HealthChecksForAlerts).')
@minValue(1)
@maxValue(167)
param nearExpiryHours int = 24

@description('CollectorRunFailing: failed runs in a row (applied in HealthChecksForAlerts).')
@minValue(1)
param failedRuns int = 3

@description('BlobExpired: alert when a tenant x content type has more expired blobs than this.')
@minValue(0)
param expiredBlobs int = 0

@description('BlobFailed: alert when a tenant x content type has more failed blobs than this.')
@minValue(0)
param failedBlobs int = 0

@description('AuditTampering: alert when a tenant has more tampering events than this.')
@minValue(0)
param tamperingEvents int = 0

@description('ADX ingestion failures: alert when a table has more failed ingestions in one evaluation window than this.')
@minValue(0)
param ingestionFailures int = 0

var receivers = length(emailAddresses) + length(webhookUris)
var actionGroups = (receivers > 0) ? [actionGroup.id] : []

// The database inside adx(): the cluster URI and the database name (case-sensitive).
var adxSource = 'adx(\'${adxQueryUri}/${adxDatabase}\')'

// One rule per HealthChecks Check. `threshold` is the row count a rule must exceed; the
// description names the HealthChecks argument that holds the rest of the threshold.
var healthRules = [
  {
    check: 'LogFlowGap'
    severity: 2
    threshold: 0
    dimensions: ['TenantId', 'ContentType']
    description: 'A tenant x content type has been silent for more than ${gapHours} h (gapHours): no content listed by the Management Activity API.'
  }
  {
    check: 'BlobExpired'
    severity: 1
    threshold: expiredBlobs
    dimensions: ['TenantId', 'ContentType']
    description: 'More than ${expiredBlobs} content blob(s) expired before they were ingested: those records are gone from the API.'
  }
  {
    check: 'BlobFailed'
    severity: 2
    threshold: failedBlobs
    dimensions: ['TenantId', 'ContentType']
    description: 'More than ${failedBlobs} content blob(s) failed: replay them (auditlake replay --azure) before they expire.'
  }
  {
    check: 'BlobNearExpiry'
    severity: 1
    threshold: 0
    dimensions: ['TenantId', 'ContentType']
    description: 'A content blob is not settled ${nearExpiryHours} h (nearExpiryHours) or less before the API stops serving it.'
  }
  {
    check: 'AuditTampering'
    severity: 0
    threshold: tamperingEvents
    dimensions: ['TenantId']
    description: 'More than ${tamperingEvents} audit tampering event(s): mailbox or organisation auditing switched off, or a subscription stopped.'
  }
  {
    check: 'CollectorRunFailing'
    severity: 1
    threshold: 0
    dimensions: ['TenantId', 'ContentType']
    description: 'The collector failed ${failedRuns} run(s) in a row (failedRuns) for a tenant x content type.'
  }
]

// Email and webhook receivers, named by position; the common alert schema for both.
resource actionGroup 'Microsoft.Insights/actionGroups@2023-01-01' = if (receivers > 0) {
  name: actionGroupName
  location: 'global'
  tags: tags
  properties: {
    enabled: true
    // At most 12 characters: the sender name of SMS and email.
    groupShortName: 'AuditLake'
    emailReceivers: [for (address, i) in emailAddresses: {
      name: 'email-${i}'
      emailAddress: address
      useCommonAlertSchema: true
    }]
    webhookReceivers: [for (uri, i) in webhookUris: {
      name: 'webhook-${i}'
      serviceUri: uri
      useCommonAlertSchema: true
    }]
  }
}

resource workspace 'Microsoft.OperationalInsights/workspaces@2023-09-01' existing = {
  name: last(split(workspaceId, '/'))
}

// Log Analytics Reader: a rule's identity must read every workspace its query runs in.
resource workspaceReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(workspace.id, identityPrincipalId, '73c42c96-874c-492b-b04d-ab87d138a893')
  scope: workspace
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', '73c42c96-874c-492b-b04d-ab87d138a893')
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// Each rule reads the rows of one Check. Stateful (autoMitigate): an alert fires once per
// dimension value and resolves when the check stops reporting it. The query is not validated
// at creation: the identity's roles and the ADX function may still be propagating.
resource healthAlerts 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = [for rule in (healthRulesEnabled ? healthRules : []): {
  name: '${namePrefix}-${rule.check}'
  location: location
  tags: tags
  kind: 'LogAlert'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    displayName: 'AuditLake ${rule.check}'
    description: rule.description
    severity: rule.severity
    enabled: true
    scopes: [
      workspaceId
    ]
    evaluationFrequency: evaluationFrequency
    windowSize: evaluationFrequency
    skipQueryValidation: true
    autoMitigate: true
    criteria: {
      allOf: [
        {
          query: '${adxSource}.${healthFunction}\n| where Check == \'${rule.check}\'\n| project TenantId, ContentType, Subject, Detail, Since, Severity\n'
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: rule.threshold
          dimensions: [for dimension in rule.dimensions: {
            name: dimension
            operator: 'Include'
            values: ['*']
          }]
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    actions: {
      actionGroups: actionGroups
      customProperties: {
        check: rule.check
        runbook: 'docs/operations.md'
      }
    }
  }
  dependsOn: [
    workspaceReader
  ]
}]

// ADX's own record of failed ingestions (all tables of this database), in the workspace.
resource ingestionFailureAlert 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: '${namePrefix}-IngestionFailed'
  location: location
  tags: tags
  kind: 'LogAlert'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    displayName: 'AuditLake IngestionFailed'
    description: 'ADX failed more than ${ingestionFailures} ingestion(s) into a table of ${adxDatabase}: the app re-drives what its ledger knows of (BlobFailed); a bookkeeping table or a failing cluster shows only here.'
    severity: 1
    enabled: true
    scopes: [
      workspaceId
    ]
    evaluationFrequency: evaluationFrequency
    windowSize: evaluationFrequency
    skipQueryValidation: true
    autoMitigate: true
    criteria: {
      allOf: [
        {
          query: 'FailedIngestion\n| where Database == \'${adxDatabase}\'\n| project TimeGenerated, Table, ErrorCode, FailureStatus, ShouldRetry, Details, IngestionSourcePath\n'
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: ingestionFailures
          dimensions: [
            {
              name: 'Table'
              operator: 'Include'
              values: ['*']
            }
          ]
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    actions: {
      actionGroups: actionGroups
      customProperties: {
        check: 'IngestionFailed'
        runbook: 'docs/operations.md'
      }
    }
  }
  dependsOn: [
    workspaceReader
  ]
}

output actionGroupId string = receivers > 0 ? actionGroup.id : ''
